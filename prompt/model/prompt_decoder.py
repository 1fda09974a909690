"""PromptDecoder: trained prompt-token embeddings appended after the input of any causal LM.

The base model is used as it is (no modeling file copied): the prompt tokens' embeddings are
concatenated to the input embeddings, and their positions and attention pattern are given through
`position_ids` and a 4D attention mask.
"""
from __future__ import annotations

import io
import os

import torch
from torch import nn

from prompt.errors import PPDError
from prompt.jsonio import write_bytes, write_json
from prompt.model import backbone
from prompt.model.cache import new_cache
from prompt.model.config import AggregationType, PromptConfig
from prompt.model.layout import SpecialTokenLayout, virtual_token_attention  # noqa: F401 (re-exported)
from prompt.model.loading import load_base_model, parse_dtype, resolve_checkpoint_path, resolve_prompt_tokens_path

WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
WEIGHTING_LAYERS_NAME = "weighting_layers.pt"
CUSTOM_LM_HEAD_NAME = "custom_lm_head.pt"
PREFIX_NAME = "prefix_tuning.pt"  # our earlier prefix file (special tokens at the anchor's next positions)
PREFIX_DIR = "prefix"  # upstream's: a peft PrefixTuning adapter in this subfolder


class PrefixKV(nn.Module):
    """Prefix tuning: trained keys and values [layers, kv_heads, P*N, head_dim] that sit before the sequence in
    every layer's cache. Only the special tokens see them (special token j its own P), so the base model's
    output is unchanged; they carry no position (keys are stored as they are, without rotary)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys = nn.Parameter(keys.detach().float().clone())
        self.values = nn.Parameter(values.detach().float().clone())

    @property
    def length(self) -> int:
        return self.keys.shape[2]


class PromptDecoder(nn.Module):
    """A frozen causal LM plus `num_special_tokens x virtual_tokens_per_special_token` trainable embeddings.

    Decoding is `prompt.inference.decoding.Decoder(model)`; upstream's `model.ppd_generate(input_ids, ...)` is
    installed on this class by `prompt.inference.upstream_generate` (a layer above; `import prompt` loads it)."""

    def __init__(self, base_model, config: PromptConfig, tokenizer=None, prompt_embeddings: torch.Tensor | None = None):
        super().__init__()
        backbone.check_supported(base_model)
        hidden = base_model.config.hidden_size
        if config.token_dim is not None and config.token_dim != hidden:
            raise PPDError(f"prompt tokens have hidden size {config.token_dim} but the base model's is {hidden}")
        config.token_dim = hidden
        self.base_model = base_model
        self.config = config
        self.tokenizer = tokenizer
        # the folder this checkpoint was loaded from: inference files beside the weights (trees, tuned decoding)
        # are read from there by `prompt.inference.choice`
        self.checkpoint_dir = None
        device = base_model.get_input_embeddings().weight.device
        if prompt_embeddings is None:
            prompt_embeddings = self._initial_embeddings()
        if tuple(prompt_embeddings.shape) != (config.num_virtual_tokens, hidden):
            raise PPDError(
                f"prompt_embeddings has shape {tuple(prompt_embeddings.shape)}, expected "
                f"({config.num_virtual_tokens}, {hidden}) for this config and base model")
        # fp32 master copy: trained in full precision, cast to the base model's dtype when used
        self.prompt_embeddings = nn.Parameter(prompt_embeddings.detach().to(device=device, dtype=torch.float32).clone())
        n, v = config.num_special_tokens, config.virtual_tokens_per_special_token
        self.weighting_layers = None
        if config.aggregation_type == AggregationType.WEIGHTED:
            self.weighting_layers = nn.ModuleList(nn.Linear(v, 1, bias=False) for _ in range(n))
            for layer in self.weighting_layers:
                nn.init.constant_(layer.weight, 1.0 / v)
        elif config.aggregation_type == AggregationType.ADAPTIVE_WEIGHTED:
            self.weighting_layers = nn.ModuleList(nn.Linear(hidden, 1, bias=False) for _ in range(n))
            for layer in self.weighting_layers:
                nn.init.zeros_(layer.weight)  # starts as the mean
        self.custom_lm_head = None
        if config.use_custom_lm_head:
            head = base_model.get_output_embeddings()
            self.custom_lm_head = nn.Linear(hidden, head.weight.shape[0], bias=False)
            self.custom_lm_head.weight = nn.Parameter(head.weight.detach().float().clone())
        if config.num_exits > 1 and not hasattr(backbone.body(base_model), "norm"):
            raise PPDError("num_exits > 1 needs a base model whose decoder has a final `norm`")
        self.prefix = None
        if config.use_prefix_tuning:
            self.prefix = PrefixKV(*self._initial_prefix())
        for module in (self.weighting_layers, self.custom_lm_head, self.prefix):
            if module is not None:
                module.to(device=device, dtype=torch.float32)
        self.layout = SpecialTokenLayout.from_config(config)
        base_model.requires_grad_(False)

    # ----------------------------------------------------------------------------------------------
    # construction, saving and loading
    def _initial_embeddings(self) -> torch.Tensor:
        table = self.base_model.get_input_embeddings().weight
        count = self.config.num_virtual_tokens
        if self.config.prompt_tuning_init == "TEXT" and self.tokenizer is not None:
            ids = self.tokenizer(self.config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
            if ids:
                ids = (ids * (count // len(ids) + 1))[:count]  # repeat the text to fill, as peft does
                return table[torch.tensor(ids, device=table.device)].detach().float()
        generator = torch.Generator().manual_seed(0)
        std = table.detach().float().std().item()
        return torch.randn(count, table.shape[1], generator=generator) * std

    @torch.no_grad()
    def _initial_prefix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix keys and values taken from the base model's own cache over the init text (repeated to P*N
        tokens), so that training starts from keys and values of the kind the layers produce."""
        from transformers import DynamicCache

        count = self.config.prefix_virtual_tokens * self.config.num_special_tokens
        ids = []
        if self.tokenizer is not None:
            ids = self.tokenizer(self.config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            ids = torch.randint(0, self.base_model.get_input_embeddings().weight.shape[0], (count,),
                                generator=torch.Generator().manual_seed(0)).tolist()
        ids = torch.tensor((ids * (count // len(ids) + 1))[:count], device=self.device)[None]
        cache = DynamicCache(config=self.base_model.config)
        backbone.run_body(self.base_model, self.embed(ids), None, torch.arange(count, device=self.device)[None], cache)
        keys = torch.stack([layer.keys[0] for layer in cache.layers]).float()
        values = torch.stack([layer.values[0] for layer in cache.layers]).float()
        return keys, values

    @property
    def prefix_length(self) -> int:
        """Cache slots the prefix takes before the sequence (0 without prefix tuning)."""
        return self.prefix.length if self.prefix is not None else 0

    def with_prefix(self, cache=None, batch: int = 1):
        """A new cache holding the prefix keys and values, then `cache`'s entries (if given)."""
        merged = new_cache(self.base_model, prefix_length=self.prefix.length)
        dtype = self.dtype
        for i in range(self.prefix.keys.shape[0]):
            keys = self.prefix.keys[i].to(dtype)[None].expand(batch, -1, -1, -1)
            values = self.prefix.values[i].to(dtype)[None].expand(batch, -1, -1, -1)
            if cache is not None:
                keys = torch.cat([keys, cache.layers[i].keys], -2)
                values = torch.cat([values, cache.layers[i].values], -2)
            merged.update(keys, values, i)
        return merged

    def num_trained_parameters(self) -> int:
        """Parameters of everything trained on top of the frozen base model (prompt tokens, prefix, weighting
        layers, custom head)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("base_model."))

    @property
    def device(self) -> torch.device:
        return self.prompt_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.get_input_embeddings().weight.dtype

    def save_pretrained(self, directory: str) -> None:
        """Write `adapter_config.json` and `adapter_model.safetensors` (key `prompt_embeddings`), as peft does.

        Each file is written atomically (a kill or a full disk leaves the old file or none, never a part of one).
        """
        from safetensors.torch import save

        os.makedirs(directory, exist_ok=True)
        self.config.save_pretrained(directory)
        embeddings = {"prompt_embeddings": self.prompt_embeddings.detach().float().cpu().contiguous()}
        write_bytes(os.path.join(directory, WEIGHTS_NAME), save(embeddings))
        for module, name in self._extra_modules():
            write_bytes(os.path.join(directory, name), torch_bytes(module.state_dict()))
        if self.prefix is not None:
            self._save_prefix(directory)

    @property
    def prefix_at_next_positions(self) -> bool:
        """Whether the special tokens sit at the anchor's next positions (our earlier prefix convention, saved as
        `prefix_tuning.pt`) rather than after the prefix positions (upstream's, saved as the `prefix/` adapter)."""
        return self.prefix is not None and self.layout.position_shift == 0

    def use_next_positions_for_prefix(self) -> None:
        """Place the special tokens at the anchor's next positions (the convention the shipped tokens were trained
        with); `save_pretrained` then writes `prefix_tuning.pt`, which loads with the same convention."""
        self.layout = SpecialTokenLayout.from_config(self.config, upstream_prefix_positions=False)

    def _save_prefix(self, directory: str) -> None:
        """Save the prefix in the file whose loading keeps this model's position convention, after removing the
        other convention's file of this checkpoint (it would otherwise be loaded in its place; removed first, a kill
        in between leaves a checkpoint that refuses to load rather than one that loads the wrong prefix)."""
        adapter = os.path.join(directory, PREFIX_DIR)
        if self.prefix_at_next_positions:
            for name in (WEIGHTS_NAME, "adapter_config.json"):
                if os.path.isfile(os.path.join(adapter, name)):
                    os.remove(os.path.join(adapter, name))
            if os.path.isdir(adapter) and not os.listdir(adapter):
                os.rmdir(adapter)
            write_bytes(os.path.join(directory, PREFIX_NAME), torch_bytes(self.prefix.state_dict()))
        else:
            if os.path.isfile(os.path.join(directory, PREFIX_NAME)):
                os.remove(os.path.join(directory, PREFIX_NAME))
            self._save_prefix_adapter(adapter)

    def _save_prefix_adapter(self, folder: str) -> None:
        """The prefix as upstream saves it: a peft PrefixTuning adapter (`adapter_config.json`, and
        `adapter_model.safetensors` whose `prompt_embeddings` is [P*N, 2*layers*kv_dim], peft's layout)."""
        from peft import PrefixTuningConfig
        from safetensors.torch import save

        os.makedirs(folder, exist_ok=True)
        layers, kv_heads, count, head_dim = self.prefix.keys.shape
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=count, token_dim=kv_heads * head_dim,
                                    num_layers=layers, num_attention_heads=kv_heads, num_transformer_submodules=1,
                                    base_model_name_or_path=self.config.base_model_name_or_path, inference_mode=True)
        write_json(os.path.join(folder, "adapter_config.json"), config.to_dict(), indent=2, sort_keys=True)
        embeddings = prefix_embeddings(self.prefix.keys.detach(), self.prefix.values.detach())
        write_bytes(os.path.join(folder, WEIGHTS_NAME), save({"prompt_embeddings": embeddings.float().cpu().contiguous()}))

    def load_prefix(self, folder: str) -> None:
        """Load the prefix of the checkpoint in `folder`: upstream's `prefix/` peft adapter (special tokens placed
        after the prefix positions, as upstream trains them), else our earlier `prefix_tuning.pt` (placed at the
        anchor's next positions, as it was trained)."""
        adapter = os.path.join(folder, PREFIX_DIR)
        if os.path.isdir(adapter):
            keys, values = read_prefix_adapter(adapter, tuple(self.prefix.keys.shape))
            with torch.no_grad():
                self.prefix.keys.copy_(keys)
                self.prefix.values.copy_(values)
            self.layout = SpecialTokenLayout.from_config(self.config)
        else:
            _load_extra(self.prefix, os.path.join(folder, PREFIX_NAME), required=True,
                        missing=f"a prefix ({PREFIX_DIR}/ or {PREFIX_NAME})")
            self.use_next_positions_for_prefix()

    def _extra_modules(self) -> list:
        """(module, file name) of the trained parts beside the prompt embeddings that this model has."""
        return [(module, name) for module, name in ((self.weighting_layers, WEIGHTING_LAYERS_NAME),
                                                    (self.custom_lm_head, CUSTOM_LM_HEAD_NAME)) if module is not None]

    # ----------------------------------------------------------------------------------------------
    # pieces used by training and by the decode loop
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.base_model.get_input_embeddings()(token_ids)

    def prompt_embeds(self) -> torch.Tensor:
        """The [NV, hidden] prompt-token embeddings in the base model's dtype."""
        return self.prompt_embeddings.to(self.dtype)

    def special_hidden(self, output, rows, batch_rows=slice(None)) -> torch.Tensor:
        """Hidden states of the special-token inputs at `rows` of the batch rows `batch_rows` (all by default),
        averaged over the last `num_exits` layers."""
        if self.config.num_exits == 1:
            return output.last_hidden_state[batch_rows, rows]
        norm = backbone.body(self.base_model).norm
        exits = output.hidden_states[-self.config.num_exits:]
        return torch.stack([norm(h[batch_rows, rows]) for h in exits[:-1]]
                           + [output.last_hidden_state[batch_rows, rows]]).mean(0)

    def special_token_logits(self, hidden: torch.Tensor, head_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [..., n*V, H] of n special tokens' virtual tokens -> aggregated logits [..., n, vocab].

        `head_logits`: the base model's head already applied to `hidden` (only where `reads_base_head()`).
        """
        v = self.config.virtual_tokens_per_special_token
        if head_logits is not None:
            logits = head_logits
        elif self.custom_lm_head is not None:
            logits = backbone.apply_head(self.custom_lm_head, hidden.to(self.custom_lm_head.weight.dtype))
        else:
            logits = backbone.head_logits(self.base_model, hidden)
        if v == 1:
            return logits
        shape = logits.shape[:-2]
        n = logits.shape[-2] // v
        logits = logits.reshape(*shape, n, v, logits.shape[-1])
        if self.config.aggregation_type == AggregationType.MEAN:
            return logits.mean(-2)
        if self.config.aggregation_type == AggregationType.WEIGHTED:
            weights = torch.stack([layer.weight[0] for layer in self.weighting_layers[:n]])  # [n, V]
        else:
            hidden = hidden.reshape(*shape, n, v, hidden.shape[-1]).float()
            scores = torch.stack([self.weighting_layers[i](hidden[..., i, :, :])[..., 0] for i in range(n)], -2)
            weights = scores.softmax(-1)  # [..., n, V]
        return (logits.float() * weights[..., None]).sum(-2).to(logits.dtype)

    def needs_hidden_states(self) -> bool:
        return self.config.num_exits > 1

    def reads_base_head(self) -> bool:
        """True when the special tokens' logits are the base model's head over their last hidden states."""
        return self.custom_lm_head is None and self.config.num_exits == 1

    # ----------------------------------------------------------------------------------------------
    # training forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Append the prompt tokens after each (left- or right-padded) sequence and return the special tokens' logits.

        Returns a tuple (special_logits [B, N, vocab], next_token_logits [B, vocab]): special token k
        predicts the token k+1 places after the last input token; the second item is the base model's
        own prediction for the next token.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        nv = self.config.num_virtual_tokens
        positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
        lengths = keep.sum(-1)

        # the special tokens of row b follow its last real token, at position lengths[b] - 1
        special = [self.layout.append((lengths[b] - 1)[None], keep[b][None]) for b in range(batch)]
        position_ids = torch.cat([positions, torch.stack([s[0] for s in special])], 1)
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
        tokens = causal[None] & keep[:, None, :]
        # padded query rows attend to themselves so that no softmax row is empty
        tokens[:, torch.arange(length), torch.arange(length)] |= ~keep
        tokens = torch.cat([tokens, torch.zeros(batch, length, nv, dtype=torch.bool, device=device)], -1)
        allowed = torch.cat([tokens, torch.stack([s[1] for s in special])], 1)
        rows = torch.cat([torch.full((length,), -1, device=device), special[0][2]])
        allowed = self.layout.with_prefix_columns(allowed, rows)
        cache = self.with_prefix(batch=batch) if self.prefix is not None else None
        mask = backbone.additive_mask(allowed[:, None], self.dtype)

        embeds = torch.cat([self.embed(input_ids), self.prompt_embeds()[None].expand(batch, -1, -1)], 1)
        output = backbone.run_body(self.base_model, embeds, mask, position_ids, cache,
                                   output_hidden_states=self.needs_hidden_states())
        special = self.special_token_logits(self.special_hidden(output, slice(length, length + nv)))
        last = length - 1 - keep.flip(-1).long().argmax(-1)  # the last real token, for any padding side
        last_hidden = output.last_hidden_state[torch.arange(batch, device=device), last]
        next_logits = backbone.head_logits(self.base_model, last_hidden)
        return special, next_logits


def torch_bytes(obj) -> bytes:
    """`torch.save` of `obj`, in memory (written with prompt.jsonio.write_bytes)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _load_state(path: str) -> dict:
    """The tensors saved in `path`; a file that cannot be read as one (empty, truncated, garbage) is reported as
    corrupt, apart from a file that reads but does not fit the model (reported where it is loaded)."""
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types (zip, pickle, safetensors header errors)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PPDError(f"{path} is corrupt or unreadable ({reason}); restore it from the training output "
                       "or a checkpoint-* folder") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PPDError(f"{path} is corrupt: it does not hold a dictionary of tensors")
    return state


def check_finite(state: dict, path: str) -> None:
    """Refuse tensors with NaN or infinite values: a single one makes every PPD answer empty or wrong."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise PPDError(f"{path} is corrupt: {name} holds {bad} non-finite value(s) (NaN or inf); "
                           "these prompt tokens cannot be used (retrain, or restore the file from a checkpoint-* folder)")


def prefix_embeddings(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Prefix keys and values [layers, kv_heads, P*N, head_dim] -> peft's PrefixTuning table [P*N, 2*layers*kv_dim]
    (peft views a row as [layers*2, heads, head_dim], keys and values of layer l at 2l and 2l+1)."""
    layers, kv_heads, count, head_dim = keys.shape
    both = torch.stack([keys, values], 1).reshape(2 * layers, kv_heads, count, head_dim)
    return both.permute(2, 0, 1, 3).reshape(count, 2 * layers * kv_heads * head_dim)


def read_prefix_adapter(folder: str, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [layers, kv_heads, P*N, head_dim] (`shape`) from upstream's `prefix/` peft adapter."""
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(folder)
    except Exception as exc:  # peft raises ValueError, TypeError, JSON errors for a bad config
        raise PPDError(f"{folder}: not a readable peft adapter config ({str(exc).splitlines()[0]})") from None
    if str(config.peft_type) not in ("PREFIX_TUNING", "PeftType.PREFIX_TUNING"):
        raise PPDError(f"{folder}/adapter_config.json is a {config.peft_type} adapter, not PREFIX_TUNING")
    if getattr(config, "prefix_projection", False):
        raise PPDError(f"{folder}: a prefix with a projection (prefix_projection) is not supported")
    layers, kv_heads, count, head_dim = shape
    if getattr(config, "num_virtual_tokens", None) != count:
        raise PPDError(f"{folder}/adapter_config.json has num_virtual_tokens={getattr(config, 'num_virtual_tokens', None)}"
                       f", but the checkpoint's adapter_config.json asks for prefix_virtual_tokens x num_special_tokens"
                       f" = {count}")
    weights = next((os.path.join(folder, name) for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)
                    if os.path.isfile(os.path.join(folder, name))), None)
    if weights is None:
        raise PPDError(f"{folder!r} holds no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}")
    state = _load_state(weights)
    table = state.get("prompt_embeddings")
    if table is None:
        raise PPDError(f"{weights} holds no tensor named prompt_embeddings")
    if tuple(table.shape) != (count, 2 * layers * kv_heads * head_dim):
        raise PPDError(f"{weights} does not fit this base model: prompt_embeddings has shape {tuple(table.shape)}, "
                       f"expected ({count}, {2 * layers * kv_heads * head_dim}) = (prefix_virtual_tokens x "
                       f"num_special_tokens, 2 x layers x key/value width)")
    check_finite({"prompt_embeddings": table}, weights)
    both = table.float().reshape(count, 2 * layers, kv_heads, head_dim).permute(1, 2, 0, 3)
    return both[0::2], both[1::2]


def _load_extra(module, path: str, required: bool, missing: str | None = None) -> None:
    """Load one of the extra trained parts (weighting layers, custom head, prefix) from its file."""
    if not os.path.isfile(path):
        if required:
            raise PPDError(f"{os.path.dirname(path)!r} is a checkpoint without {missing or os.path.basename(path)}, "
                           "which its adapter_config.json asks for")
        return
    state = _load_state(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise PPDError(f"{path} does not fit this base model: {str(exc).splitlines()[0]}") from None
    check_finite(state, path)


def _one_of(name, value, alias, alias_value, default, key=str):
    """`value` or its alias's (the same, by `key`, when both are given), else `default`."""
    if value is not None and alias_value is not None and key(value) != key(alias_value):
        raise PPDError(f"{name}={value!r} and {alias}={alias_value!r} disagree: give one of them")
    return value if value is not None else alias_value if alias_value is not None else default


def _device_of_map(device_map):
    """transformers' `device_map` as our `device`: "auto", a device, or {"": device} (the whole model on it)."""
    if device_map is None or isinstance(device_map, (str, torch.device, int)):
        return f"cuda:{device_map}" if isinstance(device_map, int) else device_map
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return _device_of_map(device_map[""])
    raise PPDError(f"device_map={device_map!r} is not supported: use device_map='auto' (spread over the GPUs and "
                   "the CPU) or one device")


class AutoPromptDecoder:
    """Load prompt tokens saved in the upstream/peft layout together with their base model."""

    @classmethod
    def from_pretrained(cls, path, base_model=None, tokenizer=None, base_model_path=None, dtype=None,
                        device=None, config: PromptConfig | None = None, load_in_4bit: bool = False,
                        load_in_8bit: bool = False, *, torch_dtype=None, low_cpu_mem_usage=None, device_map=None,
                        **unsupported) -> PromptDecoder:
        """Load `path` (a folder or a Hub repo id with adapter_config.json and adapter_model.safetensors/.bin).

        The base model comes from `base_model` if given, else `base_model_path`, else the checkpoint's
        `base_model_name_or_path` (a local folder, a Hub repo id or the default model). `dtype` (default float32;
        a name or a torch.dtype); `device`: None (cuda when available, else cpu), "cpu", "cuda:N" or "auto";
        `load_in_4bit`/`load_in_8bit`: bitsandbytes.

        Upstream's and transformers' spellings work too: `torch_dtype` (an alias of `dtype`), `device_map`
        ("auto", a device, or {"": device}) and `low_cpu_mem_usage` (accepted; loading is always low-memory).
        """
        dtype = _one_of("dtype", dtype, "torch_dtype", torch_dtype, default="float32", key=parse_dtype)
        device = _one_of("device", device, "device_map", _device_of_map(device_map), default=None)
        if unsupported:
            raise PPDError(f"AutoPromptDecoder.from_pretrained does not take {', '.join(sorted(unsupported))} "
                           "(it takes dtype/torch_dtype, device/device_map, low_cpu_mem_usage, base_model_path, "
                           "load_in_4bit, load_in_8bit)")
        # the default model's names mean the shipped prompt tokens; a Hub id is downloaded (or read from the cache)
        path = resolve_checkpoint_path(resolve_prompt_tokens_path(path))
        saved_config = PromptConfig.from_pretrained(path)
        config = config or saved_config
        weights = None
        for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
            if os.path.isfile(os.path.join(path, name)):
                weights = os.path.join(path, name)
                break
        if weights is None:
            raise PPDError(f"no {WEIGHTS_NAME} in {path!r}")
        state = _load_state(weights)
        if "prompt_embeddings" not in state:
            raise PPDError(f"{weights} holds no tensor named prompt_embeddings")
        check_finite({"prompt_embeddings": state["prompt_embeddings"]}, weights)
        if base_model is None:
            base_model, loaded_tokenizer = load_base_model(
                base_model_path or saved_config.base_model_name_or_path, dtype=dtype, device=device,
                load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
            tokenizer = tokenizer or loaded_tokenizer
        embeddings = state["prompt_embeddings"]
        hidden = base_model.config.hidden_size
        if embeddings.dim() != 2 or embeddings.shape[1] != hidden:
            raise PPDError(f"prompt tokens in {path!r} have hidden size {embeddings.shape[-1]} "
                           f"but the base model's hidden size is {hidden}")
        if config.token_dim not in (None, hidden):
            raise PPDError(f"adapter config token_dim={config.token_dim} does not match the base model's hidden size {hidden}")
        model = PromptDecoder(base_model, config, tokenizer=tokenizer, prompt_embeddings=embeddings)
        if model.weighting_layers is not None and saved_config.aggregation_type == config.aggregation_type:
            _load_extra(model.weighting_layers, os.path.join(path, WEIGHTING_LAYERS_NAME), required=False)
        if model.custom_lm_head is not None and saved_config.use_custom_lm_head:
            _load_extra(model.custom_lm_head, os.path.join(path, CUSTOM_LM_HEAD_NAME), required=False)
        if model.prefix is not None and saved_config.use_prefix_tuning:
            model.load_prefix(path)
        model.checkpoint_dir = str(path)
        model.eval()
        return model
