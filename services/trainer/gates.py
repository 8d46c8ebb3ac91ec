"""Gate decisions: pure functions from measured numbers and thresholds to
(passed, reasons). A run that fails a gate is still published, as a candidate that
is not promoted, and the reasons travel in the manifest and the ModelUpdate event."""

from __future__ import annotations

from dataclasses import dataclass, field

from .settings import GateThresholds


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def reward_model_gate(accuracy: float, previous_accuracy: float | None, gates: GateThresholds) -> GateResult:
    """Accuracy on held-out pairs above the floor, and no worse than the previous
    version (scored on the same held-out pairs) by more than epsilon."""
    reasons = []
    if accuracy < gates.min_rm_accuracy:
        reasons.append(f"rm_accuracy {accuracy:.3f} < min {gates.min_rm_accuracy:.3f}")
    if previous_accuracy is not None and accuracy < previous_accuracy - gates.rm_accuracy_epsilon:
        reasons.append(f"rm_accuracy {accuracy:.3f} < previous {previous_accuracy:.3f} - eps {gates.rm_accuracy_epsilon}")
    return GateResult(not reasons, reasons)


@dataclass(frozen=True)
class PolicyEval:
    reward_mean: float
    previous_reward_mean: float
    win_rate: float  # share of held-out prompts where the candidate outscores the previous policy
    kl: float  # mean sequence KL(candidate || reference) on its own samples
    degenerate_rate: float  # empty or repetitive answers

    def as_metrics(self) -> dict[str, float]:
        return {"reward_mean": self.reward_mean, "previous_reward_mean": self.previous_reward_mean,
                "win_rate": self.win_rate, "kl": self.kl, "degenerate_rate": self.degenerate_rate}


def policy_gate(ev: PolicyEval, gates: GateThresholds) -> GateResult:
    reasons = []
    if ev.reward_mean < ev.previous_reward_mean - gates.reward_epsilon:
        reasons.append(f"reward_mean {ev.reward_mean:.4f} < previous {ev.previous_reward_mean:.4f}"
                       f" - eps {gates.reward_epsilon}")
    if ev.kl > gates.max_kl:
        reasons.append(f"kl {ev.kl:.4f} > cap {gates.max_kl}")
    if ev.win_rate < gates.min_win_rate:
        reasons.append(f"win_rate {ev.win_rate:.3f} < min {gates.min_win_rate:.3f}")
    if ev.degenerate_rate > gates.max_degenerate_rate:
        reasons.append(f"degenerate_rate {ev.degenerate_rate:.3f} > max {gates.max_degenerate_rate:.3f}")
    return GateResult(not reasons, reasons)


def is_degenerate(text: str, min_distinct_ratio: float = 0.3) -> bool:
    """Empty, or so repetitive that few of its words are distinct (a looping model)."""
    words = text.split()
    if not words:
        return True
    if len(words) < 8:
        return False
    return len(set(words)) / len(words) < min_distinct_ratio
