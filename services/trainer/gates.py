"""Gate decisions: pure functions from measured numbers and thresholds to
(passed, reasons). A run that fails a gate is still published, as a candidate that
is not promoted, and the reasons travel in the manifest and the ModelUpdate event.

A candidate is promoted only on evidence: on enough held-out prompts, an
independent judge prefers it to the incumbent often enough (effect size) and more
often than chance would explain (one-sided sign test at `alpha`). A candidate that
changed nothing ties on every prompt, has no decided comparison, p = 1, and is gated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .settings import GateThresholds


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed
    notes: list[str] = field(default_factory=list)  # what it could not judge


def reward_model_gate(accuracy: float, previous_accuracy: float | None, gates: GateThresholds,
                      heldout_pairs: int | None = None) -> GateResult:
    """Accuracy on held-out pairs above the floor, and no worse than the previous
    version (scored on the same held-out pairs) by more than epsilon — judged only on
    `min_rm_heldout_pairs` or more: 4 of 7 pairs says nothing about a reward model,
    and the policy gate still needs its own evidence."""
    if heldout_pairs is not None and heldout_pairs < gates.min_rm_heldout_pairs:
        return GateResult(True, [], [f"rm accuracy not gated: {heldout_pairs} held-out pairs"
                                     f" < {gates.min_rm_heldout_pairs}"])
    reasons = []
    if accuracy < gates.min_rm_accuracy:
        reasons.append(f"rm_accuracy {accuracy:.3f} < min {gates.min_rm_accuracy:.3f}")
    if previous_accuracy is not None and accuracy < previous_accuracy - gates.rm_accuracy_epsilon:
        reasons.append(f"rm_accuracy {accuracy:.3f} < previous {previous_accuracy:.3f} - eps {gates.rm_accuracy_epsilon}")
    return GateResult(not reasons, reasons)


@dataclass(frozen=True)
class PolicyEval:
    prompts: int  # held-out prompts both policies answered
    wins: int  # prompts where the judge scored the candidate's answer above the incumbent's
    losses: int
    ties: int
    win_rate: float  # (wins + ties/2) / prompts
    p_value: float  # one-sided sign test, candidate better
    judge: str
    judge_score_delta: float  # mean judge score, candidate minus incumbent
    kl: float  # mean sequence KL(candidate || training reference) on its own samples
    kl_base: float  # the same against the base model
    degenerate_rate: float  # empty or repetitive answers
    finished_rate: float = 0.0  # answers that ended before the token cap
    incumbent_finished_rate: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {"eval_prompts": self.prompts, "eval_wins": self.wins, "eval_losses": self.losses,
                "eval_ties": self.ties, "win_rate": self.win_rate, "p_value": self.p_value,
                "judge_score_delta": self.judge_score_delta, "kl": self.kl, "kl_base": self.kl_base,
                "degenerate_rate": self.degenerate_rate, "finished_rate": self.finished_rate,
                "incumbent_finished_rate": self.incumbent_finished_rate}


def policy_gate(ev: PolicyEval, gates: GateThresholds) -> GateResult:
    reasons = []
    if ev.prompts < gates.min_eval_prompts:
        reasons.append(f"only {ev.prompts} held-out prompts < min {gates.min_eval_prompts}")
    if ev.p_value > gates.alpha:
        reasons.append(f"no evidence the candidate beats the incumbent: {ev.wins} wins, {ev.losses} losses,"
                       f" {ev.ties} ties (judge {ev.judge}), sign test p {ev.p_value:.3g} > alpha {gates.alpha}")
    if ev.win_rate < gates.min_win_rate:
        reasons.append(f"win_rate {ev.win_rate:.3f} < min {gates.min_win_rate:.3f}")
    if ev.kl > gates.max_kl:
        reasons.append(f"kl {ev.kl:.4f} > cap {gates.max_kl}")
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
