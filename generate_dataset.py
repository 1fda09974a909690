"""Build PPD training data: truncated chat data (finetune), teacher distributions (distillation), or the base
model's own replies to prompts (self_distillation). See `python generate_dataset.py --help` and prompt/data/cli.py."""
import os
import sys

try:
    import prompt  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prompt.data.cli import main

if __name__ == "__main__":
    main()
