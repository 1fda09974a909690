"""The dtype a checkpoint decodes fastest in, read from its tuned decoding (decoding.json) before the model loads:
the web UI, the demo and the comparison pick their default dtype here."""
from __future__ import annotations

import os

from prompt.inference.choice import DECODING_NAME, fastest_dtype
from prompt.model.defaults import checkpoint_folder


def fastest_decoding_dtype(model_path, device=None) -> str:
    """The dtype in which the checkpoint's tuned decoding (decoding.json) is fastest on this kind of device."""
    folder = checkpoint_folder(model_path)
    return fastest_dtype(os.path.join(folder, DECODING_NAME) if folder else None, device)
