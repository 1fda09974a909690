"""Parallel Prompt Decoding (PPD): trained prompt tokens + dynamic sparse-tree verification for causal LMs."""
from prompt.errors import PPDError
from prompt.inference import Decoder, GenerationResult
from prompt.model import AutoPromptDecoder, PromptConfig, PromptDecoder, load_base_model

__all__ = ["PPDError", "Decoder", "GenerationResult", "AutoPromptDecoder", "PromptConfig", "PromptDecoder",
           "load_base_model"]
__version__ = "0.1.0"
