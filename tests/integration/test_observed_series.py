"""Every series an alert or a dashboard panel reads is emitted by a running loop.

The static catalogue (tests/unit/test_metrics_catalogue.py) proves the names exist in
code; it cannot see that a labelled series only appears after its first `.labels()`
call, nor that a producer was built without metrics. Here the whole loop runs as an
operator starts it (`rlhf-loop up`, the demo on, tiny models, a low training
threshold), until a training run has finished and traffic went through every stage;
then every service's /metrics is scraped and each metric (with the label values an
expression selects, and the labels it groups by) must be there. The alert tests'
input series (rules_test.yml) must be series the loop really emits, too.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared.embedded.ports import free_port_block
from tests.conftest import wait_for
from tests.helpers.cli import start_up, stop_up
from tests.unit.test_metrics_catalogue import (
    GROUP_BY,
    ROOT,
    referenced_in_dashboard,
    referenced_in_rules,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

# Small everything: a run starts after a few ranked records (5 candidates: up to 10
# pairs each; 4 distinct prompts make a failed split unlikely) and trains in seconds;
# lenient gates so it is promoted and served, which is what the serving and demo panels
# show. Runs start at most every 90 s: the demo's probe of the newly served version
# holds while a run trains, and must not wait for the next run too.
THRESHOLD = 16
LOOP_ENV = {
    "RLHF_TRAINER__THRESHOLD": str(THRESHOLD),
    "RLHF_TRAINER__MIN_INTERVAL_S": "90",
    "RLHF_TRAINER__CHECK_INTERVAL_S": "1",
    # a run needs prompts on both sides of the prompt-hash split; 0.5 needs the fewest
    # (until then a run fails and the next one retries with more data)
    "RLHF_TRAINER__HELDOUT_FRACTION": "0.5",
    "RLHF_TRAINER__HYPER__PPO_EPISODES": "8",
    "RLHF_TRAINER__HYPER__PPO_EPOCHS": "1",
    "RLHF_TRAINER__HYPER__PPO_MINI_BATCHES": "1",
    "RLHF_TRAINER__HYPER__POLICY_BATCH_SIZE": "8",
    "RLHF_TRAINER__HYPER__RESPONSE_LENGTH": "8",
    "RLHF_TRAINER__HYPER__MAX_LENGTH": "64",
    "RLHF_TRAINER__HYPER__LORA_R": "4",
    "RLHF_TRAINER__HYPER__LORA_ALPHA": "8",
    "RLHF_TRAINER__GATES__MIN_RM_ACCURACY": "0",
    "RLHF_TRAINER__GATES__MIN_WIN_RATE": "0",
    "RLHF_TRAINER__GATES__ALPHA": "1",
    "RLHF_TRAINER__GATES__MAX_KL": "1000",
    "RLHF_TRAINER__GATES__MAX_DEGENERATE_RATE": "1",
    "RLHF_TRAINER__GATES__EVAL_PROMPTS": "4",
    "RLHF_TRAINER__GATES__MIN_EVAL_PROMPTS": "1",
    "RLHF_TRAINER__GATES__JUDGE_FOLDS": "2",
    "RLHF_POLICY_SERVER__MAX_TOKENS_DEFAULT": "8",
    "RLHF_POLICY_SERVER__CANARY_GRADUATE_AFTER_S": "3",
    "RLHF_DEMO__MAX_TOKENS": "8",
    "RLHF_DEMO__REQUESTS_PER_S": "1",
    "RLHF_DEMO__ANNOTATOR_DELAY_S": "0",
    "RLHF_DEMO__EVAL_PROMPTS": "4",
    "RLHF_DEMO__EVAL_CHECK_INTERVAL_S": "2",
    "RLHF_ANNOTATION__POLL_INTERVAL_S": "1",
}
# Labels Prometheus adds at scrape time, not the services.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(rlhf_[a-z0-9_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')

Series = dict[str, list[dict[str, str]]]


def scrape(ports: dict[str, int]) -> tuple[Series, dict[str, float]]:
    """Sample name -> label sets, over every service; plus name{labels} -> value sums."""
    series: Series = defaultdict(list)
    values: dict[str, float] = defaultdict(float)
    for port in ports.values():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                series[sample.name].append(dict(sample.labels))
                values[sample.name] += sample.value
                for key, value in sample.labels.items():
                    values[f"{sample.name}{{{key}={value}}}"] += sample.value
    return series, values


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, wanted in matchers:
        value = labels.get(name, "")
        if op == "=" and value != wanted or op == "!=" and value == wanted:
            return False
        if op == "=~" and not re.fullmatch(wanted, value) or op == "!~" and re.fullmatch(wanted, value):
            return False
    return True


def missing_in(expr: str, series: Series) -> list[str]:
    """What `expr` reads that no scraped series provides."""
    problems = []
    for name, selector in SELECTOR.findall(expr):
        matchers = MATCHER.findall(selector or "")
        found = [labels for labels in series.get(name, []) if matches(labels, matchers)]
        if not found:
            problems.append(f"{name}{{{selector}}}" if selector else name)
    for labels, name in GROUP_BY.findall(expr):
        wanted = {label.strip() for label in labels.split(",")}
        if series.get(name) and not any(wanted <= set(s) for s in series[name]):
            problems.append(f"{name} without label(s) {sorted(wanted)}")
    return problems


def rules_test_series() -> list[str]:
    tests = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules_test.yml").read_text())
    return [s["series"] for t in tests["tests"] for s in t.get("input_series", [])]


def fed_but_not_emitted(selector: str, series: Series) -> bool:
    """A rules_test input series (labels as the services set them, target labels
    aside) that no service emits."""
    name, _, rest = selector.partition("{")
    if not name.startswith("rlhf_"):
        return False  # up: Prometheus' own
    matchers = [(k, "=", v) for k, _op, v in MATCHER.findall(rest) if k not in TARGET_LABELS]
    return not any(matches(labels, matchers) for labels in series.get(name, []))


@pytest.fixture
def demo_loop(tmp_path: Path, tiny_policy: Path) -> Iterator[tuple[dict[str, int], Path]]:
    """`rlhf-loop up` with the demo: every service, the broker, Argilla; tiny models."""
    from services.catalog import EMBEDDED_LOOP

    base = free_port_block(len(EMBEDDED_LOOP))
    process, _banner = start_up(
        ["--data-dir", str(tmp_path), "--http-port-base", str(base), "--status-interval", "0", "--grace-seconds", "10"],
        RLHF_POLICY_SERVER__BASE_MODEL=str(tiny_policy), RLHF_TRAINER__BASE_MODEL=str(tiny_policy), **LOOP_ENV)
    try:
        yield {name: base + i for i, name in enumerate(EMBEDDED_LOOP)}, tmp_path
    finally:
        stop_up(process)


# Traffic through every stage, each as its service counts it.
STAGES = {
    "demo replayed": "rlhf_demo_requests_total{outcome=ok}",
    "policy answered": "rlhf_policy_requests_total{status=ok}",
    "captured": "rlhf_policy_captured_total{outcome=ok}",
    "sampled": "rlhf_sampler_tasks_total",
    "pushed to Argilla": "rlhf_annotation_records_pushed_total",
    "ranked": "rlhf_demo_records_ranked_total",
    "collected": "rlhf_annotation_records_collected_total",
    "preferences": "rlhf_annotation_preferences_total",
    "stored": "rlhf_trainer_stored_total{kind=preference}",
    "logged": "rlhf_messages_consumed_total{group=event-logger}",
    "trained": "rlhf_trainer_runs_total{outcome=succeeded}",
    "served": "rlhf_messages_consumed_total{topic=rlhf.model-updates}",
    "probed": "rlhf_demo_win_rate_prompts",
}


def test_every_series_alerts_and_panels_use_is_emitted_by_the_running_loop(
        demo_loop: tuple[dict[str, int], Path]) -> None:
    started = time.monotonic()
    ports, data_dir = demo_loop
    state: dict[str, object] = {}

    def flowed() -> bool:
        series, values = scrape(ports)
        state.update(series=series, values=values)
        finished = values.get("rlhf_trainer_runs_total{outcome=succeeded}", 0) + values.get(
            "rlhf_trainer_runs_total{outcome=gated}", 0)
        return finished >= 1 and all(values.get(s, 0) > 0 for s in STAGES.values())

    assert wait_for(flowed, timeout_s=330, interval_s=2), {
        stage: state["values"].get(s, 0) for stage, s in STAGES.items()}  # type: ignore[union-attr]
    series: Series = state["series"]  # type: ignore[assignment]

    # The settings this test set are the ones the loop ran with.
    with sqlite3.connect(data_dir / "trainer" / "store.sqlite") as db:
        trigger, count = db.execute("SELECT trigger, preference_count FROM runs ORDER BY created_at LIMIT 1").fetchone()
    assert trigger.endswith(f">= {THRESHOLD}") and count < 40, (trigger, count)  # 40: the demo's own threshold
    manifests = sorted((data_dir / "registry" / "policy").glob("*/manifest.json"))
    assert manifests, "no policy version was published"
    hyper = json.loads(manifests[0].read_text())["hyperparameters"]
    assert (hyper["ppo_episodes"], hyper["response_length"], hyper["lora_r"]) == (8, 8, 4), hyper
    values: dict[str, float] = state["values"]  # type: ignore[assignment]
    assert values["rlhf_demo_win_rate_prompts"] == 4  # RLHF_DEMO__EVAL_PROMPTS

    assert referenced_in_rules() and referenced_in_dashboard()
    unseen = {expr: missing for expr in referenced_in_rules() + referenced_in_dashboard()
              if (missing := missing_in(expr, series))}
    assert not unseen, "series no running service emits:\n" + "\n".join(
        f"  {missing}  <- {expr}" for expr, missing in unseen.items())
    fed = [s for s in rules_test_series() if fed_but_not_emitted(s, series)]
    assert not fed, f"rules_test.yml feeds series nothing emits: {fed}"
    print(f"\nloop observed after {time.monotonic() - started:.0f}s")
