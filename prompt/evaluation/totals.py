"""What a decoding method produced over a run, summed over its answers."""
from __future__ import annotations

from dataclasses import dataclass, field

from prompt.inference.decoding import GenerationResult


@dataclass
class MethodTotals:
    """What one decoding method produced over a run: its answers' results summed (`add`)."""

    tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    inputs: int = 0  # inputs of the verify forwards after each prefill (our loop only)
    chain_wins: int = 0
    identical: int = 0  # answers equal to a reference method's (the caller decides which)
    answers: int = 0
    outputs: list = field(default_factory=list)
    step_tokens: list = field(default_factory=list)  # tokens accepted per forward after the prefill (our loop only)
    steps: int = 0  # decoding steps after the prefill, as upstream counts them (GenerationResult.decoding_steps)
    per_question: list = field(default_factory=list)  # (new tokens, seconds) of each question, all turns

    def add(self, result: GenerationResult, identical: bool = True) -> None:
        self.tokens += result.new_tokens
        self.seconds += result.wall_time
        self.passes += result.forward_passes
        self.inputs += result.forward_inputs
        self.steps += result.decoding_steps if result.forward_passes else 0
        self.chain_wins += result.chain_wins
        self.identical += int(identical)
        self.answers += 1
        self.outputs.append(result.token_ids)
        self.step_tokens.extend(result.step_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def accept_length(self) -> float | None:
        """New tokens per forward; None where the forwards were not counted (transformers prompt lookup)."""
        return self.tokens / self.passes if self.passes else None

    @property
    def accept_length_upstream(self) -> float | None:
        """Upstream's accept length: new tokens per decoding step, the prefill not counted; None where uncounted."""
        return self.tokens / self.steps if self.passes and self.steps else None

    @property
    def inputs_per_step(self) -> float | None:
        """Mean inputs of a verify forward after a prefill; None where the forwards were not counted."""
        forwards = self.passes - self.answers
        return self.inputs / forwards if self.passes and forwards > 0 else None

    def merge(self, other: "MethodTotals") -> None:
        """Add another run's totals (a worker's) to these."""
        for name in ("tokens", "seconds", "passes", "inputs", "steps", "chain_wins", "identical", "answers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("outputs", "step_tokens", "per_question"):
            getattr(self, name).extend(getattr(other, name))

    def row(self) -> dict:
        """The totals as a JSON row (`accept_length` counts the prefill as a forward; `accept_length_upstream` is
        upstream's measure, per decoding step after the prefill)."""
        return {"tokens": self.tokens, "seconds": round(self.seconds, 3), "passes": self.passes, "steps": self.steps,
                "chain_wins": self.chain_wins, "answers": self.answers, "identical": self.identical,
                "tokens_per_second": self.tokens_per_second, "accept_length": self.accept_length,
                "accept_length_upstream": self.accept_length_upstream, "inputs_per_step": self.inputs_per_step}

    def summary(self, label: str) -> str:
        text = (f"{label}: {self.tokens} new tokens in {self.seconds:.1f} s = "
                f"{self.tokens / max(self.seconds, 1e-9):.2f} tokens/s")
        if self.passes:
            text += f", accept length {self.accept_length:.3f} tokens per forward (prefill counted)"
        if self.accept_length_upstream:
            text += f", {self.accept_length_upstream:.3f} per decoding step (upstream's accept length)"
        return text
