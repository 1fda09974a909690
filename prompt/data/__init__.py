"""Training data for the prompt tokens: truncated chat data, teacher distributions, and self-distilled replies.

`generate_dataset.py` (top level) is the command line; `prompt.data.files` reads and writes the dataset files
that `prompt/train/train.py` and `prompt.evaluation.accuracy` consume.
"""
from prompt.data.files import DATASET_TYPES, DatasetFile, dataset_file_name, load_dataset, save_dataset

__all__ = ["DATASET_TYPES", "DatasetFile", "dataset_file_name", "load_dataset", "save_dataset"]
