"""Training the prompt tokens (the base model stays frozen): `python prompt/train/train.py --help`."""
