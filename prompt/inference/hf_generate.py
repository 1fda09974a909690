"""transformers' own `generate` interface, decoded with PPD (the reverse of
`prompt.evaluation.transformers_baseline.TransformersBaseline`, transformers' generate behind our decoders' interface).

One line switches a transformers model to PPD; everything else stays as with transformers (GenerationConfig,
keyword options, streamers, stop strings, stopping criteria, the returned LongTensor or
`GenerateDecoderOnlyOutput`):

    from prompt.inference.hf_generate import enable_ppd_generate
    model = enable_ppd_generate(AutoPromptDecoder.from_pretrained("ppd-checkpoint"))   # the base model, PPD inside
    out = model.generate(input_ids, max_new_tokens=64, streamer=TextStreamer(tokenizer))

`generate(model, ...)` is also a transformers Hub-style custom generate function (`model` first, then
`generate`'s own arguments). transformers 5 calls a *callable* `custom_generate=` without the streamer, so the
switch replaces the instance's `generate`, as transformers itself does for a model repository that ships one.

Honoured: max_new_tokens / max_length, do_sample, temperature, top_k, top_p (sampling is exact: the output
distribution is the base model's after transformers' own warpers, top_k 50 by default as in transformers), eos_token_id,
stop_strings (with tokenizer=), max_time, stopping_criteria, prompt_lookup_num_tokens, streamer,
return_dict_in_generate. Anything else that would change the output (beams, penalties, logits processors,
batches of more than one sequence, scores...) is refused with one PPDError naming it.

PPD's own keywords beside transformers' (for an application that shows how the answer was decoded, such as the
web UI): `tree_length` (the tree size, 0 for plain decoding without prompt tokens, which any causal LM can do;
None: the checkpoint's tuned decoding), `result` (a `GenerationResult` filled while decoding: tokens, forward
passes, wall time, stop reason) and `decoder_class` (a `Decoder` subclass). `ppd_decoder` builds the Decoder that
`generate` decodes with, e.g. to describe it.
"""
from __future__ import annotations

import copy
import functools
import time

import torch

from prompt.errors import PPDError
from prompt.inference.decoding import Decoder, GenerationResult
from prompt.model.prompt_decoder import PromptDecoder

# GenerationConfig fields that change nothing here: metadata, cache and compile settings, assistant-only fields
# (an assistant model is refused on its own)
_INERT = {"transformers_version", "_from_model_config", "bos_token_id", "pad_token_id", "decoder_start_token_id",
          "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
          "prefill_chunk_size", "is_assistant", "assistant_confidence_threshold", "assistant_early_exit",
          "assistant_lookbehind", "target_lookbehind", "num_assistant_tokens", "num_assistant_tokens_schedule",
          "assistant_ensemble_weight", "low_memory", "early_stopping", "length_penalty", "max_matching_ngram_size"}
_HONOURED = {"max_new_tokens", "max_length", "do_sample", "temperature", "eos_token_id", "stop_strings", "max_time",
             "return_dict_in_generate", "prompt_lookup_num_tokens", "top_k", "top_p"}
_NEUTRAL = {"num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "repetition_penalty": 1.0,
            "encoder_repetition_penalty": 1.0, "typical_p": 1.0, "guidance_scale": 1.0, "min_length": 0,
            "min_new_tokens": 0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
# keyword arguments of generate() that are not GenerationConfig fields
_INPUT_KWARGS = {"input_ids", "attention_mask", "tokenizer", "use_model_defaults"}


def _check_config(config, do_sample: bool) -> None:
    for key, value in config.to_dict().items():
        if key in _INERT or value is None or value is False or value == _NEUTRAL.get(key, object()):
            continue
        if key not in _HONOURED:
            raise PPDError(f"generate option {key}={value!r} is not supported by PPD decoding")
    if do_sample:
        if config.temperature is not None and config.temperature <= 0:  # None: transformers' default, 1.0
            raise PPDError(f"temperature must be > 0 with do_sample=True, got {config.temperature}")


def _eos_ids(config) -> list:
    eos = config.eos_token_id
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def ppd_decoder(model, config, tree_length: int | None = None, decoder_class=Decoder) -> Decoder:
    """The Decoder that `generate` runs for the GenerationConfig `config` on `model` (a PromptDecoder; any causal
    LM with tree_length=0): greedy, or with do_sample exact sampling with transformers' warpers (top_k is 50
    unless set, as in transformers)."""
    sampling = {"temperature": float(config.temperature or 1.0), "top_p": config.top_p,
                "top_k": 50 if config.top_k is None else config.top_k} if config.do_sample else {}
    return decoder_class(model, **sampling, tree_length=tree_length, stop_token_ids=_eos_ids(config),
                         prompt_lookup_num_tokens=config.prompt_lookup_num_tokens)


def generate(model, inputs=None, generation_config=None, logits_processor=None, stopping_criteria=None,
             prefix_allowed_tokens_fn=None, synced_gpus=None, assistant_model=None, streamer=None,
             negative_prompt_ids=None, negative_prompt_attention_mask=None, prompt_decoder=None,
             tree_length: int | None = None, result: GenerationResult | None = None, decoder_class=Decoder, **kwargs):
    """transformers' `GenerationMixin.generate`, decoded by PPD's loop (`prompt_decoder`, or `model` when it is a
    PromptDecoder). Returns the prompt followed by the new tokens ([1, L] LongTensor), or a
    GenerateDecoderOnlyOutput with `.sequences` when return_dict_in_generate is set. `tree_length`, `result` and
    `decoder_class` are PPD's own (this module's docstring)."""
    from transformers.generation import GenerateDecoderOnlyOutput

    ppd = prompt_decoder if prompt_decoder is not None else model
    if not isinstance(ppd, PromptDecoder) and tree_length != 0:
        raise PPDError("PPD generate needs a PromptDecoder (pass prompt_decoder=, or use enable_ppd_generate)")
    base = ppd.base_model if isinstance(ppd, PromptDecoder) else ppd  # a plain causal LM decodes plainly
    _refuse_options(logits_processor=logits_processor, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                    assistant_model=assistant_model, negative_prompt_ids=negative_prompt_ids,
                    negative_prompt_attention_mask=negative_prompt_attention_mask, synced_gpus=synced_gpus)
    input_ids = _one_sequence(inputs if inputs is not None else kwargs.get("input_ids"), kwargs.get("attention_mask"))
    config = _generation_config(generation_config if generation_config is not None else base.generation_config,
                                kwargs)
    max_new = _max_new_tokens(config, input_ids.shape[1])
    criteria = _stopping_criteria(config, stopping_criteria, kwargs.get("tokenizer"))
    decoder = ppd_decoder(ppd, config, tree_length, decoder_class)
    result = result if result is not None else GenerationResult()
    sequence = _decode(decoder, input_ids, max_new, result, criteria, streamer)
    sequences = torch.tensor([sequence], dtype=torch.long, device=input_ids.device)
    if config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


def _refuse_options(synced_gpus=None, **options) -> None:
    """One PPDError for the first of transformers' options that would change the output here."""
    for name, value in options.items():
        if value is not None and not (name == "logits_processor" and len(value) == 0):
            raise PPDError(f"generate option {name} is not supported by PPD decoding")
    if synced_gpus:
        raise PPDError("generate option synced_gpus is not supported by PPD decoding")


def _one_sequence(input_ids, attention_mask) -> torch.Tensor:
    """The [1, length] prompt; PPDError for none, a batch of several, or padding."""
    if input_ids is None:
        raise PPDError("generate needs input ids")
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise PPDError(f"PPD generate decodes one sequence at a time (batch size 1), got input of shape "
                       f"{tuple(input_ids.shape)}")
    if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
        raise PPDError("PPD generate takes no padding: the attention mask must be all ones")
    return input_ids


def _generation_config(config, kwargs: dict):
    """A copy of `config` updated with `kwargs`, checked: transformers' own validation, then ours."""
    config = copy.deepcopy(config)
    try:  # transformers validates the options here (its own one-line errors)
        unused = config.update(**{k: v for k, v in kwargs.items() if k not in _INPUT_KWARGS})
    except ValueError as exc:
        raise PPDError(str(exc)) from None
    if unused:
        raise PPDError(f"generate option(s) {', '.join(sorted(unused))} not supported by PPD decoding")
    _check_config(config, bool(config.do_sample))
    return config


def _max_new_tokens(config, length: int) -> int:
    if config.max_new_tokens is not None:
        max_new = config.max_new_tokens
    elif config.max_length is not None:
        max_new = config.max_length - length
    else:
        max_new = 20  # transformers' model-agnostic default: 20 new tokens
    if max_new < 1:
        raise PPDError(f"nothing to generate: max_new_tokens is {max_new} (max_length {config.max_length}, "
                       f"input length {length})")
    return max_new


def _stopping_criteria(config, stopping_criteria, tokenizer):
    from transformers import StoppingCriteriaList
    from transformers.generation.stopping_criteria import MaxTimeCriteria, StopStringCriteria

    criteria = StoppingCriteriaList(stopping_criteria or [])
    if config.stop_strings:
        if tokenizer is None:
            raise PPDError("stop_strings needs the tokenizer: pass tokenizer= to generate")
        criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time, time.time()))
    return criteria


def _decode(decoder, input_ids, max_new: int, result: GenerationResult, criteria, streamer) -> list:
    """The prompt and the new tokens, each step's tokens streamed, cut where a stopping criterion stops."""
    if streamer is not None:
        streamer.put(input_ids.cpu())
    sequence, length = input_ids[0].tolist(), input_ids.shape[1]
    steps = decoder.stream(input_ids, max_new, result=result)
    try:
        for step in steps:
            kept, stop = [], False
            for token in step:
                kept.append(token)
                sequence.append(token)
                if len(criteria) and bool(criteria(torch.tensor([sequence]), None).any()):
                    stop = True
                    break
            if streamer is not None:
                streamer.put(torch.tensor(kept))
            if stop:
                break
    finally:
        steps.close()
        del result.token_ids[len(sequence) - length:]  # what a stopping criterion cut off
        if streamer is not None:
            streamer.end()
    return sequence


def enable_ppd_generate(prompt_decoder: PromptDecoder):
    """The base model of `prompt_decoder`, whose `generate` (transformers' signature) now decodes with PPD."""
    if not isinstance(prompt_decoder, PromptDecoder):
        raise PPDError("enable_ppd_generate takes a PromptDecoder (e.g. AutoPromptDecoder.from_pretrained(path))")
    base = prompt_decoder.base_model
    base.generate = functools.partial(generate, base, prompt_decoder=prompt_decoder)
    return base
