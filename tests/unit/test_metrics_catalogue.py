"""One catalogue of the loop's metrics: what the services register. The README table,
the Grafana dashboard and the alert rules may only name metrics (and group by labels)
that exist there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from services.annotation.metrics import AnnotationMetrics
from services.capture.metrics import CaptureMetrics
from services.demo.metrics import DemoMetrics
from services.policy_server.metrics import PolicyServerMetrics
from services.sampler.metrics import SamplerMetrics
from services.trainer.metrics import TrainerMetrics
from shared.observability.batched_histogram import BatchedHistogram
from shared.observability.metrics import BusMetrics

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\brlhf_[a-z0-9_]+")
GROUP_BY = re.compile(r"by \(([a-z_, ]+)\) \((?:rate|increase)\((rlhf_[a-z0-9_]+)")


def families() -> dict[str, tuple[str, set[str]]]:
    """Exposed family name -> (type, label names)."""
    registry = CollectorRegistry()
    found: dict[str, tuple[str, set[str]]] = {}
    for builder in (BusMetrics, SamplerMetrics, CaptureMetrics, AnnotationMetrics, TrainerMetrics,
                    PolicyServerMetrics, DemoMetrics):
        for metric in vars(builder(registry)).values():
            if isinstance(metric, MetricWrapperBase):
                name = metric._name + ("_total" if isinstance(metric, Counter) else "")  # noqa: SLF001
                found[name] = (metric._type, set(metric._labelnames))  # noqa: SLF001
            elif isinstance(metric, BatchedHistogram):
                found[metric.name] = ("histogram", set(metric.labelnames))
    return found


def exposed_names() -> set[str]:
    names = set()
    for name, (kind, _labels) in families().items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_names_follow_prometheus_conventions() -> None:
    for name, (kind, labels) in families().items():
        assert name.startswith("rlhf_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        assert not name.endswith("_milliseconds") and "_ms" not in name, f"{name}: use base units"
        assert not labels & {"event_id", "output_id", "task_id", "user", "prompt"}, f"{name}: unbounded label"


def test_readme_catalogue_lists_exactly_the_registered_metrics() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(rlhf_[a-z0-9_]+)` \|", readme, flags=re.M))
    assert listed == set(families())


def referenced_in_dashboard() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "rlhf-loop.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def referenced_in_rules() -> list[str]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_dashboard_and_alerts_use_only_catalogued_metrics_and_labels() -> None:
    names, fams = exposed_names(), families()
    for expr in referenced_in_dashboard() + referenced_in_rules():
        unknown = set(METRIC.findall(expr)) - names
        assert not unknown, f"{expr}: unknown metrics {unknown}"
        for labels, metric in GROUP_BY.findall(expr):
            family = metric.removesuffix("_bucket")
            wanted = {label.strip() for label in labels.split(",")} - {"le"}
            assert wanted <= fams[family][1], f"{expr}: {family} has no label(s) {wanted - fams[family][1]}"


def test_the_dashboard_covers_the_loop_funnel() -> None:
    used = {m for expr in referenced_in_dashboard() for m in METRIC.findall(expr)}
    for stage in ("rlhf_capture_events_accepted_total", "rlhf_sampler_tasks_total",
                  "rlhf_annotation_records_collected_total", "rlhf_annotation_preferences_total",
                  "rlhf_trainer_runs_total", "rlhf_policy_traffic_share", "rlhf_annotation_tasks_pending"):
        assert stage in used, stage


# Labels Prometheus attaches at scrape time; every other label of an input series must
# be one its metric really has.
TARGET_LABELS = {"instance", "job"}
SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"')


def fed_to_rule_tests() -> list[str]:
    tests = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules_test.yml").read_text())
    return [s["series"] for t in tests["tests"] for s in t.get("input_series", [])]


def test_alert_tests_feed_only_series_the_services_emit() -> None:
    """rules_test.yml must test the alerts on series that exist (names and label names);
    tests/integration/test_observed_series.py checks the label values on a running loop."""
    names, fams = exposed_names(), families()
    for series in fed_to_rule_tests():
        match = SERIES.match(series.strip())
        assert match, series
        name, labels = match.group(1), {k for k, _v in LABEL.findall(match.group(2) or "")}
        if name == "up":  # Prometheus' own
            continue
        assert name in names, f"{series}: no service registers {name}"
        family = next(f for f in (name, name.removesuffix("_bucket"), name.removesuffix("_count"),
                                  name.removesuffix("_sum")) if f in fams)
        unknown = labels - TARGET_LABELS - fams[family][1]
        assert not unknown, f"{series}: {family} has no label(s) {unknown}"
