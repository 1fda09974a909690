"""Side-by-side comparison, in one process: transformers `generate` greedy (alone and with prompt lookup),
our plain loop (alone and with prompt lookup), PPD (alone, with prompt lookup, untrained) and the tuned decoding.

Methods run interleaved question by question, so machine noise hits them alike; speeds are
reported as ratios to `generate` greedy, and every greedy output is checked against it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.evaluation.totals import MethodTotals
from prompt.evaluation.transformers_baseline import TransformersBaseline
from prompt.inference.acceptance import acceptance_rule
from prompt.inference.candidates import SuffixCandidates
from prompt.inference.choice import (
    DecodingChoice,
    priced_drafts,
    resolve_decoding,
    trees_for,
    tuned_decoding,
)
from prompt.inference.cost_profile import machine_profile
from prompt.inference.decoding import Decoder, Decoding
from prompt.inference.tree import select_tree_spec
from prompt.model.config import PromptConfig
from prompt.model.defaults import load_prompt_decoder
from prompt.model.devices import add_device_flags, device_kwargs
from prompt.model.prompt_decoder import PromptDecoder
from prompt.model.weight_layout import TRANSPOSED

BUSY_SPREAD = 1.25  # the repeated reference measure moving more than this (max/min) means a contended machine


@dataclass
class MethodInputs:
    """What every method's factory may read: the model, its stops and the comparison's shared settings."""

    model: object  # the PromptDecoder
    formatter: ChatFormatter
    stops: list
    tree_spec: dict  # the PPD methods' tree
    lookup_tokens: int
    dtype: str
    temperature: float
    suffix_nodes: int

    @property
    def base(self):
        return self.model.base_model

    def suffix(self) -> list:
        return [SuffixCandidates(self.suffix_nodes, stop_token_ids=self.stops)]

    def tree(self, prompt_lookup_num_tokens: int = 0) -> DecodingChoice:
        return DecodingChoice(self.tree_spec, prompt_lookup_num_tokens)


@dataclass(frozen=True)
class Method:
    """One row of the comparison: `factory(inputs)` builds its decoder; `ours`: a greedy row of this library;
    `peer`: the peer a user would pick that it stands for (each peer at its best over its rows)."""

    factory: Callable[[MethodInputs], object]
    help: str
    ours: bool = False
    peer: str | None = None


def _ours(decoding, help: str, model=lambda i: i.model, sources=None) -> Method:
    """A greedy row of our loop: `model(inputs)` decoded with `decoding(inputs)` (None: the tuned decoding), plus
    `sources(inputs)` where given."""
    def factory(inputs: MethodInputs):
        extra = {} if sources is None else {"sources": sources(inputs)}
        return Decoder(model(inputs), decoding(inputs), stop_token_ids=inputs.stops, **extra)
    return Method(factory, help, ours=True)


def _plain(decoding, help: str) -> Method:
    return _ours(decoding, help, model=lambda i: i.base)


def _sampled(sampling: str, greedy_tuned: bool = False):
    def factory(inputs: MethodInputs):
        rule = acceptance_rule(sampling, inputs.temperature)
        if not greedy_tuned:  # the tuned decoding of the rule itself (its own decoding.json entry where it has one)
            return Decoder(inputs.model, rule=rule, stop_token_ids=inputs.stops)
        greedy = tuned_decoding(inputs.model, inputs.dtype)  # the tree and lookup tuned for greedy decoding
        decoding = Decoding.resolve(inputs.model, tree_length=greedy.get("tree_length"),
                                    prompt_lookup_num_tokens=greedy.get("prompt_lookup_num_tokens", 0),
                                    sampling=rule.name)
        return Decoder(inputs.model, decoding, rule, stop_token_ids=inputs.stops)
    return factory


def _untrained(inputs: MethodInputs):
    """Text-initialised prompt tokens of the same shape: the untrained baseline."""
    config = inputs.model.config
    untrained = PromptDecoder(inputs.base, PromptConfig(
        num_special_tokens=config.num_special_tokens,
        virtual_tokens_per_special_token=config.virtual_tokens_per_special_token,
        vt_attention_type=config.vt_attention_type), tokenizer=inputs.formatter.tokenizer).eval()
    return Decoder(untrained, inputs.tree(), stop_token_ids=inputs.stops)


def _unpriced(decoding: Decoding) -> Decoding:
    """`decoding` with every draft verified whole (no draft pricing), its reason saying so."""
    reason = decoding.reason.split("; each draft cut")[0] + "; every draft verified whole" if decoding.reason else None
    return replace(decoding, input_costs=(), pricing=None, reason=reason)


METHODS = {
    "generate": Method(lambda i: TransformersBaseline(i.base, i.stops), "transformers greedy (dynamic cache)",
                       peer="transformers generate"),
    "generate_static": Method(lambda i: TransformersBaseline(i.base, i.stops, static_cache=True),
                              "the same with its static cache", peer="transformers generate"),
    "generate_compiled": Method(lambda i: TransformersBaseline(i.base, i.stops, static_cache=True, compiled=True),
                                "static cache and torch.compile (about a minute of compiling per prompt shape, all "
                                "done in the warm-up)", peer="transformers generate"),
    "generate_lookup": Method(lambda i: TransformersBaseline(i.base, i.stops, prompt_lookup_num_tokens=i.lookup_tokens,
                                                             max_matching_ngram_size=2),
                              "transformers prompt lookup decoding matching up to 2-grams (its default)",
                              peer="transformers prompt lookup"),
    "generate_lookup3": Method(lambda i: TransformersBaseline(i.base, i.stops, prompt_lookup_num_tokens=i.lookup_tokens,
                                                              max_matching_ngram_size=3),
                               "the same matching up to 3-grams", peer="transformers prompt lookup"),
    "baseline": _plain(lambda i: Decoding.plain(i.base), "our plain loop"),
    "baseline_transposed": _plain(lambda i: replace(Decoding.plain(i.base), weight_layout=TRANSPOSED),
                                  "our plain loop with the weights stored transposed (prompt.model.weight_layout)"),
    "lookup": _plain(lambda i: Decoding.plain(i.base, i.lookup_tokens), "our loop with prompt lookup alone"),
    "suffix": _plain(lambda i: Decoding.plain(i.base, sources=i.suffix()),
                     "our plain loop with the suffix candidate tree"),
    "lookup_priced": _plain(lambda i: priced_drafts(i.model, DecodingChoice(None, i.lookup_tokens)),
                            "prompt lookup alone, each draft cut to the depth that pays on this machine's profile"),
    "suffix_priced": _plain(lambda i: Decoding.of(i.base, priced_drafts(i.model, DecodingChoice(None, 0)), i.suffix()),
                            "the suffix candidate tree alone, each draft cut to the depth that pays"),
    "ppd": _ours(lambda i: i.tree(), "prompt tokens alone"),
    "ppd_lookup": _ours(lambda i: i.tree(i.lookup_tokens), "prompt tokens and prompt lookup in one tree"),
    "ppd_untrained": Method(_untrained, "text-initialised prompt tokens", ours=True),
    "tuned": _ours(lambda i: None, "the checkpoint's tuned decoding"),
    "tuned_unpriced": _ours(lambda i: _unpriced(Decoding.resolve(i.model)),
                            "the checkpoint's tuned decoding (in its weight layout) with every draft verified whole"),
    "tuned_suffix": _ours(lambda i: None, "the tuned decoding with the suffix candidate tree merged in",
                          sources=MethodInputs.suffix),
    "generate_sample": Method(lambda i: TransformersBaseline(i.base, i.stops, temperature=i.temperature),
                              "at --temperature: transformers sampling"),
    "generate_lookup_sample": Method(lambda i: TransformersBaseline(i.base, i.stops, temperature=i.temperature,
                                                                    prompt_lookup_num_tokens=i.lookup_tokens),
                                     "at --temperature: transformers sampling with prompt lookup"),
    "exact": Method(_sampled("exact"), "at --temperature: the tuned decoding with exact sampling (the rule's own "
                                       "tuned entry where decoding.json has one)"),
    "typical": Method(_sampled("typical"), "at --temperature: the tuned decoding with upstream's typical acceptance"),
    "exact_greedy_tuned": Method(_sampled("exact", greedy_tuned=True),
                                 "at --temperature: exact sampling with the greedy tuned decoding"),
}
OURS = tuple(name for name, method in METHODS.items() if method.ours)  # greedy rows of this library
# the peers a user would pick, each at its best over these rows (and over dtypes in the benchmark's headline)
PEERS = {peer: tuple(name for name, method in METHODS.items() if method.peer == peer)
         for peer in dict.fromkeys(method.peer for method in METHODS.values() if method.peer)}
METHOD_HELP = "; ".join(f"{name}: {method.help}" for name, method in METHODS.items())


def build_decoders(model, formatter: ChatFormatter, methods, tree_length=None, tree_file=None, lookup_tokens=10,
                   dtype="float32", temperature: float = 0.7, suffix_nodes: int = 16):
    """Decoders by method name (`METHODS`). PPD methods use `tree_length` if given, else the tuned tree for `dtype`
    (if it uses the prompt tokens), else the tree file's largest; lookup methods use chains of `lookup_tokens`."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise PPDError(f"unknown method {unknown[0]!r}; use {', '.join(METHODS)}")
    inputs = MethodInputs(model, formatter, formatter.stops(model), _ppd_tree(model, tree_length, tree_file, dtype),
                          lookup_tokens, dtype, temperature, suffix_nodes)
    return {method: METHODS[method].factory(inputs) for method in methods}


def _ppd_tree(model, tree_length, tree_file, dtype) -> dict:
    """The PPD methods' tree, run even where the tuned decoding turns the prompt tokens off."""
    if tree_length is None and tree_file is None:
        tree_length = tuned_decoding(model, dtype).get("tree_length") or None
    config = model.config
    if tree_file:
        return select_tree_spec(tree_file, config.num_special_tokens, config.virtual_tokens_per_special_token,
                                tree_length)
    if tree_length is None:  # the default tree of the checkpoint's tree file (or of upstream's for its family)
        path, default_length = trees_for(model)
        return select_tree_spec(path, config.num_special_tokens, config.virtual_tokens_per_special_token,
                                default_length)
    # that tree file's tree of this length, else one built from the checkpoint's accuracies
    return resolve_decoding(model, tree_length=tree_length, prompt_lookup_num_tokens=0).tree_spec


def answer_conversation(decoder, formatter: ChatFormatter, turns: list[str], max_new_tokens: int, seed=None) -> list:
    """Answer each user turn in order, the decoder's own answers becoming the conversation; one result per turn."""
    conversation, results = [], []
    for turn in turns:
        conversation.append(turn)
        result = decoder.generate(formatter.input_ids(conversation), max_new_tokens, seed=seed)
        conversation.append(formatter.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip())
        results.append(result)
    return results


def compare(decoders: dict, formatter: ChatFormatter, prompts: list, max_new_tokens: int, warmup: int = 1,
            progress: bool = True, seed: int = 0, on_question=None, probes: list | None = None,
            rounds: int = 1) -> dict:
    """Run every decoder on every prompt (a user message, or a list of user turns answered in one conversation),
    interleaved and rotated against drift; return MethodTotals per method. An answer counts as identical when
    its tokens equal the reference method's (`generate` if present) for the same turn. `on_question()` is
    called after each question (for a caller's own progress display).

    Every method is warmed up first (`warmup` short answers; a compiled method answers every prompt once, so
    that its compiling is not timed). With `probes` (a list), the same short reference answer is timed
    before every question and after the last, its tokens/s appended: `busy_warning` reads them.

    With `rounds` > 1 every method answers each question that many times, the rounds interleaved across methods,
    and its fastest round counts (as timeit takes the best of its repeats: another process only ever slows a run
    down). Context sources that learn from earlier answers (the suffix tree) start every round of a question from
    the same state, so a repeat never proposes the answer it is repeating."""
    from tqdm import tqdm

    conversations = [[p] if isinstance(p, str) else list(p) for p in prompts]
    for _ in range(warmup):
        for decoder in decoders.values():
            decoder.generate(formatter.input_ids(conversations[0][:1]), min(max_new_tokens, 16))
    for decoder in decoders.values():
        if warmup and getattr(decoder, "compiled", False):  # compile every prompt shape before any timing
            for turns in conversations:
                answer_conversation(decoder, formatter, turns, max_new_tokens, seed)
        for source in getattr(decoder, "sources", ()):  # no answer of the warm-up is proposed in a timed run
            if hasattr(source, "forget"):
                source.forget()
    totals = {name: MethodTotals() for name in decoders}
    reference = "generate" if "generate" in decoders else next(iter(decoders))
    probe = (_reference_probe(decoders[reference], formatter, conversations[0][0], min(12, max_new_tokens))
             if probes is not None else None)
    for i, turns in enumerate(tqdm(conversations, desc="questions", disable=not progress)):
        if probe:
            probes.append(probe())
        names = list(decoders)
        names = names[i % len(names):] + names[: i % len(names)]  # rotate the order against drift
        states = {name: _source_states(getattr(decoders[name], "sources", ())) for name in names} if rounds > 1 else {}
        results = {}
        for round_ in range(rounds):
            for name in names:
                if round_:
                    _restore_source_states(decoders[name], states[name])
                answer = answer_conversation(decoders[name], formatter, turns, max_new_tokens, seed + i)
                if name not in results or _seconds(answer) < _seconds(results[name]):
                    results[name] = answer
        for name in decoders:
            for turn, result in enumerate(results[name]):
                totals[name].add(result, identical=result.token_ids == results[reference][turn].token_ids)
            totals[name].per_question.append((sum(r.new_tokens for r in results[name]),
                                              sum(r.wall_time for r in results[name])))
        if on_question is not None:
            on_question()
    if probe:
        probes.append(probe())
    return totals


def _seconds(results: list) -> float:
    return sum(r.wall_time for r in results)


def _source_states(sources) -> list:
    """`sources` with a copy of each that remembers earlier answers (the suffix tree's history; the others as they are)."""
    return [copy.deepcopy(source) if hasattr(source, "forget") else source for source in sources]


def _restore_source_states(decoder, states: list) -> None:
    """Put back the sources `_source_states` copied (fresh copies: the saved ones serve later rounds too)."""
    if states:
        decoder.sources[:] = _source_states(states)


def _reference_probe(decoder, formatter: ChatFormatter, prompt: str, tokens: int = 12):
    """A function timing one fixed short answer of `decoder` (tokens/s): the same work every time, so its spread
    over a run measures the machine, not the questions."""
    input_ids = formatter.input_ids([prompt])

    def probe() -> float:
        return decoder.generate(input_ids, tokens, seed=0).tokens_per_second

    return probe


def busy_warning(probes: list, totals: dict | None = None, reference: str = "generate",
                 limit: float = BUSY_SPREAD) -> str | None:
    """A warning when the machine was visibly busy during a comparison, else None: the repeated reference measure
    (`probes`, tokens/s) spread by more than `limit` (max/min), or the reference method's per-token time spread by
    more than twice that between questions."""
    reasons = []
    speeds = [p for p in probes if p > 0]
    if len(speeds) >= 2 and max(speeds) / min(speeds) > limit:
        reasons.append(f"the same short reference answer ran at {min(speeds):.1f} to {max(speeds):.1f} tokens/s "
                       f"({max(speeds) / min(speeds):.2f}x apart)")
    ref = (totals or {}).get(reference)
    if ref is not None:
        rates = [tokens / seconds for tokens, seconds in ref.per_question if tokens and seconds > 0]
        if len(rates) >= 2 and max(rates) / min(rates) > 2 * limit:
            reasons.append(f"{reference} ran at {min(rates):.1f} to {max(rates):.1f} tokens/s between questions")
    if not reasons:
        return None
    return ("warning: the machine was busy during this run (" + "; ".join(reasons) + "): the ratios below are "
            "not a clean measurement; rerun on an idle machine")


def headline(totals: dict, reference: str = "generate") -> list[str]:
    """Our fastest greedy row against each peer at its best (the faster of its rows), as lines of text."""
    ours = {name: t for name, t in totals.items() if name in OURS and t.tokens_per_second}
    if not ours:
        return []
    best = max(ours, key=lambda name: ours[name].tokens_per_second)
    lines = []
    for peer, rows in PEERS.items():
        measured = {name: totals[name] for name in rows if name in totals and totals[name].tokens_per_second}
        if measured:
            top = max(measured, key=lambda name: measured[name].tokens_per_second)
            ratio = ours[best].tokens_per_second / measured[top].tokens_per_second
            lines.append(f"{best} is {ratio:.2f}x {peer} at its best ({top}, "
                         f"{measured[top].tokens_per_second:.1f} tokens/s)")
    return lines


def format_per_question(totals: dict, reference: str = "generate") -> str:
    """tokens/s of every method on every question, as a ratio to the reference method's on that question."""
    names = list(totals)
    lines = ["| question | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in range(len(totals[names[0]].per_question)):
        ref_tokens, ref_seconds = totals[reference].per_question[i] if reference in totals else (0, 0.0)
        ref = ref_tokens / ref_seconds if ref_seconds else 0.0
        cells = []
        for name in names:
            tokens, seconds = totals[name].per_question[i]
            speed = tokens / seconds if seconds else 0.0
            cells.append(f"{speed:.1f} ({speed / ref:.2f}x)" if ref else f"{speed:.1f}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(totals: dict, reference: str = "generate") -> str:
    base = totals.get(reference)
    lines = [f"| method | tokens/s | speedup vs {reference} | accept length (per forward, prefill counted) "
             f"| upstream's accept length (per step) | identical to {reference} |",
             "|---|---|---|---|---|---|"]
    for name, t in totals.items():
        speed = f"{t.tokens_per_second / base.tokens_per_second:.2f}x" if base and base.tokens_per_second else "-"
        accept = f"{t.accept_length:.3f}" if t.accept_length else "-"
        upstream = f"{t.accept_length_upstream:.3f}" if t.accept_length_upstream else "-"
        lines.append(f"| {name} | {t.tokens_per_second:.2f} | {speed} | {accept} | {upstream} | {t.identical}/{t.answers} |")
    return "\n".join(lines)


def add_compare_flags(parser):
    add_model_flags(parser)
    parser.add_argument("--base-model-path", default=None, help="Base model folder or Hub repo id (default: the checkpoint's).")
    parser.add_argument("--model-id", default=None, help="FastChat template name, if the model needs one (e.g. vicuna).")
    add_device_flags(parser, dtype="float32")
    parser.add_argument("--tree-length", type=int, default=None,
                        help="Tree of the PPD methods (default: the tuned one for the dtype, else the largest).")
    parser.add_argument("--tree-file", default=None)
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="Chain length of the lookup methods.")
    parser.add_argument("--suffix-nodes", type=int, default=16,
                        help="Node budget of the suffix candidate tree (methods suffix, tuned_suffix).")
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--methods", default="generate,baseline,ppd", help="Comma-separated methods. " + METHOD_HELP)
    parser.add_argument("--no-profile", action="store_true",
                        help="Do not measure this machine's forward costs on first use (about a minute, once per "
                             "model, dtype and machine); the decoding is then priced on the profile shipped with the "
                             "checkpoint.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="Answer each question this many times per method (rounds interleaved across methods) and "
                             "count each method's fastest: steadier ratios on a machine shared with other work.")
    parser.add_argument("--per-question", action="store_true", help="Also print every question's tokens/s per method.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Temperature of the sampling methods.")


def run(args, prompts):
    apply_threads(args.threads)
    if args.max_new_token < 1 or args.suffix_nodes < 1 or args.rounds < 1:
        raise PPDError("--max-new-token, --suffix-nodes and --rounds must be >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
    formatter = ChatFormatter(model.tokenizer, args.model_id)
    machine_profile(model, measure=not args.no_profile)  # this machine's costs, measured on first use
    decoders = build_decoders(model, formatter, methods, args.tree_length, args.tree_file,
                              args.prompt_lookup_num_tokens, args.dtype, args.temperature, args.suffix_nodes)
    for name, decoder in decoders.items():
        if isinstance(decoder, Decoder):
            extra = [f"suffix tree {s.max_nodes}" for s in decoder.sources
                     if isinstance(s, SuffixCandidates) and not decoder.suffix_nodes]
            print(f"{name}: {decoder.describe()}" + "".join(f" + {e}" for e in extra))
            if decoder.decoding.reason:
                print(f"  why: {decoder.decoding.reason}")
    probes = []
    totals = compare(decoders, formatter, prompts, args.max_new_token, args.warmup, probes=probes, rounds=args.rounds)
    best = f", the fastest of {args.rounds} rounds per question" if args.rounds > 1 else ""
    print(f"\n{len(prompts)} prompts, {args.max_new_token} new tokens at most, {args.dtype}, "
          f"{torch.get_num_threads()} threads, every method warmed up{best}")
    reference = "generate" if "generate" in totals else next(iter(totals))  # the first method, e.g. generate_sample
    warning = busy_warning(probes, totals, reference)
    if warning:
        print(warning)
    print(format_table(totals, reference))
    for line in headline(totals, reference):
        print(f"contended, not a clean figure: {line}" if warning else line)
    if args.per_question:
        print(f"\ntokens/s per question (ratio to {reference}), in question order:")
        print(format_per_question(totals, reference))
    if args.dtype != "float32":
        print(f"({args.dtype}: a tree forward and a one-token step round differently, so greedy outputs can part "
              "at near-ties; exactness is checked in float32)")
    return totals, formatter.tokenizer


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None)
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=10)
    add_compare_flags(parser)
    args = parser.parse_args(argv)
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    run(args, [q["turns"][0] for q in questions])


if __name__ == "__main__":
    main()
