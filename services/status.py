"""The live status line of `rlhf-loop up`: the loop's funnel read from each service's
own /metrics, so what a person watches is what Prometheus would scrape."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(ports: list[int], timeout_s: float = 2.0) -> Samples:
    samples: Samples = defaultdict(list)
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            continue  # a service still starting (or restarting)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> int:
    return int(sum(v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items())))


def argilla_down(samples: Samples) -> bool:
    """The annotation service says Argilla does not answer (a service that cannot be
    scraped says nothing: it is starting or restarting)."""
    return any(value == 0 for _labels, value in samples.get("rlhf_annotation_argilla_up", []))


def gauge(samples: Samples, name: str, **labels: str) -> float | None:
    values = [v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items())]
    return values[0] if values else None


def canary_ab(samples: Samples) -> str:
    """The live A/B of a canary (the trainer's judge), or its last decision."""
    decisions = {(l["outcome"], l["reason"]): int(v) for l, v in samples.get("rlhf_canary_decisions_total", [])
                 if v > 0}
    last = ", ".join(f"{n} {outcome} ({reason})" for (outcome, reason), n in sorted(decisions.items()))
    if not gauge(samples, "rlhf_canary_live"):
        return f" | canary decisions: {last}" if last else ""
    wins, losses, ties = (int(gauge(samples, "rlhf_canary_ab_comparisons", outcome=o) or 0)
                          for o in ("win", "loss", "tie"))
    llr = gauge(samples, "rlhf_canary_ab_log_likelihood_ratio") or 0.0
    not_worse = gauge(samples, "rlhf_canary_ab_prob_not_worse") or 0.0
    return (f" | canary A/B {wins}W {losses}L {ties}T, llr {llr:+.2f}, P(not worse) {not_worse:.0%}: judging"
            + (f" (decided before: {last})" if last else ""))


def status_line(samples: Samples) -> str:
    # The trainer's durable history: a restarted trainer still shows every run.
    runs = {o: total(samples, "rlhf_trainer_runs_recorded", state=o) for o in ("succeeded", "gated", "failed")}
    serving = sorted(((v, l["version"]) for l, v in samples.get("rlhf_policy_traffic_share", []) if v > 0),
                     reverse=True)
    promoted = [l["version"] for l, v in samples.get("rlhf_trainer_model_version_info", [])
                if l.get("kind") == "policy" and l.get("pointer") == "promoted"]
    agreement = [(l, v) for l, v in samples.get("rlhf_trainer_rm_live_agreement", []) if v == v]  # NaN: not yet
    probe = {l["version"]: v for l, v in samples.get("rlhf_demo_win_rate_vs_base", [])}
    p_values = {l["version"]: v for l, v in samples.get("rlhf_demo_win_rate_p_value", [])}
    probe_n = {l["version"]: v for l, v in samples.get("rlhf_demo_win_rate_prompts", [])}
    return (
        f"outputs {total(samples, 'rlhf_policy_captured_total', outcome='ok') + total(samples, 'rlhf_capture_events_accepted_total')}"
        f" | tasks {total(samples, 'rlhf_sampler_tasks_total')}"
        + (" | Argilla DOWN (rankings wait)" if argilla_down(samples)
           else f" | in Argilla {total(samples, 'rlhf_annotation_tasks_pending')} pending")
        + f" | rankings {total(samples, 'rlhf_annotation_records_collected_total')}"
        f" | preferences {total(samples, 'rlhf_annotation_preferences_total')}"
        f" (new {total(samples, 'rlhf_trainer_preferences_since_last_training')})"
        f" | runs {runs['succeeded']} ok, {runs['gated']} gated, {runs['failed']} failed"
        f"{' (training now)' if total(samples, 'rlhf_trainer_run_active') else ''}"
        f" | promoted {promoted[0] if promoted else '-'}"
        f" | serving {', '.join(f'{version} {share:.0%}' for share, version in serving) or '-'}"
        + canary_ab(samples)
        + (f" | RM agrees with new rankings {agreement[0][1]:.0%}" if agreement else "")
        + "".join(f" | {version} vs base {rate:.0%} (p={p_values.get(version, 1.0):.2g},"
                  f" {int(probe_n.get(version, 0))} held-out prompts)" for version, rate in probe.items())
    )
