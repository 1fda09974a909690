"""PromptConfig: what a set of PPD prompt tokens is, saved as a peft-style `adapter_config.json`."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from prompt.errors import PPDError
from prompt.jsonio import write_json

CONFIG_NAME = "adapter_config.json"


class VTAttentionType(str, Enum):
    """How the virtual tokens of the special tokens attend to one another."""

    DECODER = "decoder"  # each virtual token sees every earlier virtual token
    ENCODER = "encoder"  # each virtual token sees the virtual tokens of its own special token
    ENSEMBLE = "ensemble"  # virtual token v of special token i sees virtual token v of special tokens 1..i

    def __str__(self) -> str:
        return self.value


class AggregationType(str, Enum):
    """How the V virtual tokens' logits of one special token are combined into that token's logits."""

    MEAN = "mean"
    WEIGHTED = "weighted"  # one learned weight per virtual token and special token
    ADAPTIVE_WEIGHTED = "adaptive_weighted"  # weights scored from each virtual token's hidden state

    def __str__(self) -> str:
        return self.value


def _enum(enum_cls, value, name):
    try:
        return enum_cls(str(value).lower())
    except ValueError:
        allowed = ", ".join(e.value for e in enum_cls)
        raise PPDError(f"{name} must be one of {allowed}, got {value!r}") from None


@dataclass
class PromptConfig:
    """Configuration of the PPD prompt tokens (field names as in the upstream PPD code and peft).

    `num_special_tokens` tokens are appended after the input; each is made of
    `virtual_tokens_per_special_token` trained embeddings, so the module holds
    `num_virtual_tokens = num_special_tokens * virtual_tokens_per_special_token` vectors.
    """

    base_model_name_or_path: str | None = None
    num_special_tokens: int = 3
    virtual_tokens_per_special_token: int = 1
    vt_attention_type: VTAttentionType = VTAttentionType.DECODER
    aggregation_type: AggregationType = AggregationType.MEAN
    use_custom_lm_head: bool = False
    use_prefix_tuning: bool = False
    prefix_virtual_tokens: int | None = None
    num_exits: int = 1
    prompt_tuning_init: str = "TEXT"  # TEXT or RANDOM
    prompt_tuning_init_text: str | None = None
    token_dim: int | None = None
    tokenizer_name_or_path: str | None = None
    # peft bookkeeping, kept so that peft and upstream tools read the file
    peft_type: str = "PROMPT_TUNING"
    task_type: str = "CAUSAL_LM"
    inference_mode: bool = True
    num_transformer_submodules: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.vt_attention_type = _enum(VTAttentionType, self.vt_attention_type, "vt_attention_type")
        self.aggregation_type = _enum(AggregationType, self.aggregation_type, "aggregation_type")
        for name in ("num_special_tokens", "virtual_tokens_per_special_token", "num_exits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PPDError(f"{name} must be a positive integer, got {value!r}")
        if self.use_prefix_tuning:
            if not self.prefix_virtual_tokens or self.prefix_virtual_tokens < 1:
                raise PPDError("use_prefix_tuning needs prefix_virtual_tokens >= 1")
        self.prompt_tuning_init = str(self.prompt_tuning_init).upper()
        if self.prompt_tuning_init not in ("TEXT", "RANDOM"):
            raise PPDError(f"prompt_tuning_init must be TEXT or RANDOM, got {self.prompt_tuning_init!r}")
        if self.prompt_tuning_init_text is None:
            self.prompt_tuning_init_text = " ".join(f"Next {i + 2} word" for i in range(self.num_special_tokens))

    @property
    def num_virtual_tokens(self) -> int:
        return self.num_special_tokens * self.virtual_tokens_per_special_token

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["vt_attention_type"] = str(self.vt_attention_type)
        data["aggregation_type"] = str(self.aggregation_type)
        data["num_virtual_tokens"] = self.num_virtual_tokens
        return {**self.extra, **data}

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        write_json(os.path.join(directory, CONFIG_NAME), self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "num_virtual_tokens"}
        config = cls(**kwargs, extra=extra)
        declared = data.get("num_virtual_tokens")
        if declared is not None and declared != config.num_virtual_tokens:
            raise PPDError(
                f"adapter config says num_virtual_tokens={declared} but num_special_tokens x "
                f"virtual_tokens_per_special_token = {config.num_virtual_tokens}"
            )
        return config

    @classmethod
    def from_pretrained(cls, directory: str) -> "PromptConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise PPDError(f"no {CONFIG_NAME} in {directory!r}: not a PPD prompt-token checkpoint")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise PPDError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise PPDError(f"{path} does not hold a JSON object")
        if "num_special_tokens" not in data:
            raise PPDError(f"{path} has no num_special_tokens: not a PPD prompt-token checkpoint")
        return cls.from_dict(data)
