"""transformers' own `generate` as a baseline decoder, measured side by side with ours."""
from __future__ import annotations

import time

import torch

from prompt.errors import PPDError
from prompt.inference.decoding import GenerationResult
from prompt.model.devices import synchronize
from prompt.model.weight_layout import STANDARD, set_weight_layout


class TransformersBaseline:
    """transformers' own `generate` as the baseline decoder (not PPD: `prompt.inference.hf_generate` is PPD behind
    transformers' interface), with our decoders' interface, for side-by-side comparisons: greedy, or
    plain sampling at `temperature` > 0 (no top-k or top-p truncation, the distribution exact sampling reproduces)."""

    def __init__(self, model, stop_token_ids, prompt_lookup_num_tokens=None, temperature: float = 0.0,
                 max_matching_ngram_size: int | None = None, static_cache: bool = False, compiled: bool = False):
        self.model = model
        self.stop_token_ids = list(stop_token_ids)
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.temperature = temperature
        self.max_matching_ngram_size = max_matching_ngram_size  # prompt lookup's n-gram size (None: its default, 2)
        self.static_cache = static_cache or compiled  # a compiled generate needs the static cache
        self.compiled = compiled  # torch.compile the forward on any device (the first call per shape compiles)

    def _static_cache_kwargs(self) -> dict:
        """generate's static cache, compiled or eager (transformers compiles a static cache by itself on a GPU)."""
        if not self.compiled:
            return {"cache_implementation": "static", "disable_compile": True}
        from transformers import CompileConfig

        config = CompileConfig(mode="default")  # reduce-overhead means CUDA graphs
        config._compile_all_devices = True  # transformers' switch to compile on a CPU as well
        return {"cache_implementation": "static", "compile_config": config}

    def generate(self, input_ids, max_new_tokens, seed=None) -> GenerationResult:
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and input_ids.shape[1] >= context:  # as our loop reports it, not a traceback
            raise PPDError(f"the prompt has {input_ids.shape[1]} tokens; the model's context is {context}")
        kwargs = {"do_sample": False}
        if self.prompt_lookup_num_tokens:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
            if self.max_matching_ngram_size:
                kwargs["max_matching_ngram_size"] = self.max_matching_ngram_size
        if self.static_cache:
            kwargs.update(self._static_cache_kwargs())
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
            if seed is not None:
                torch.manual_seed(seed)
        pad = self.model.generation_config.pad_token_id
        input_ids = torch.as_tensor(input_ids).to(self.model.device)
        set_weight_layout(self.model, STANDARD)  # transformers as its users run it
        synchronize(self.model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids, max_new_tokens=max_new_tokens,
                                      eos_token_id=self.stop_token_ids or None,
                                      pad_token_id=pad if pad is not None else (self.stop_token_ids or [0])[0],
                                      attention_mask=torch.ones_like(input_ids), **kwargs)
        synchronize(self.model.device)
        wall = time.perf_counter() - start
        tokens = out[0, input_ids.shape[1]:].tolist()
        # greedy generate runs one forward per new token; with prompt lookup the count is not reported
        passes = 0 if self.prompt_lookup_num_tokens else len(tokens)
        steps = [] if self.prompt_lookup_num_tokens else [1] * max(len(tokens) - 1, 0)  # one token per forward
        return GenerationResult(token_ids=tokens, forward_passes=passes, wall_time=wall, step_tokens=steps,
                                stop_reason="eos" if tokens and tokens[-1] in self.stop_token_ids else "length")
