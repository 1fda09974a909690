from prompt.model.config import AggregationType, PromptConfig, VTAttentionType
from prompt.model.loading import DEFAULT_MODEL_ID, load_base_model
from prompt.model.prompt_decoder import AutoPromptDecoder, PromptDecoder

__all__ = ["AggregationType", "PromptConfig", "VTAttentionType", "DEFAULT_MODEL_ID", "load_base_model",
           "AutoPromptDecoder", "PromptDecoder"]
