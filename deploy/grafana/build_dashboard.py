"""Builds deploy/grafana/rlhf-loop.json, the Grafana dashboard of the loop.

The JSON is committed (importable as is); this script is its source. It uses Grafana's
own Python SDK (`grafana-foundation-sdk`, in the `dev` extra), so the JSON follows the
dashboard schema of the Grafana version the SDK build targets, and every panel shares the
same datasource variable, units and layout; a test checks that every query uses only
metrics the services export.

Run: .venv/bin/python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

OUT = Path(__file__).with_name("rlhf-loop.json")
DS = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
KINDS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}

Item = Union[dashboard.Row, timeseries.Panel, stat.Panel, table.Panel]


def panel(title: str, exprs: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
          width: int = 8, description: str = "") -> Item:
    p = (KINDS[kind]().title(title).description(description).datasource(DS).unit(unit)
         .span(width).height(8))
    for i, (expr, legend) in enumerate(exprs):
        p = p.with_target(prometheus.Dataquery().datasource(DS).expr(expr).legend_format(legend)
                          .ref_id(chr(ord("A") + i)))
    if kind == "timeseries":
        p = (p.legend(common.VizLegendOptions().show_legend(True)
                      .display_mode(common_models.LegendDisplayMode.LIST)
                      .placement(common_models.LegendPlacement.BOTTOM))
             .tooltip(common.VizTooltipOptions().mode(common_models.TooltipDisplayMode.SINGLE)
                      .sort(common_models.SortOrder.NONE)))
    return p


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title).collapsed(False)


PANELS: list[Item] = [
    row("Loop funnel: outputs → tasks → rankings → preferences → runs → versions"),
    panel("Outputs captured /s", [("sum by (source) (rate(rlhf_capture_events_accepted_total[5m]))", "{{source}}"),
                                  ("sum(rate(rlhf_policy_captured_total{outcome=\"ok\"}[5m]))", "policy server")],
          "ops", width=4),
    panel("Ranking tasks /s", [("sum by (rule) (rate(rlhf_sampler_tasks_total[5m]))", "{{rule}}")], "ops", width=4),
    panel("Records pushed to Argilla /s", [("sum(rate(rlhf_annotation_records_pushed_total[5m]))", "pushed")],
          "ops", width=4),
    panel("Rankings collected /s", [("sum(rate(rlhf_annotation_records_collected_total[5m]))", "collected")],
          "ops", width=4),
    panel("Preferences /s", [("sum(rate(rlhf_annotation_preferences_total[5m]))", "preferences")], "ops", width=4),
    panel("Training runs (24h)", [("sum by (outcome) (increase(rlhf_trainer_runs_total[24h]))", "{{outcome}}")],
          kind="stat", width=4),
    panel("Sampling decisions /s", [("sum by (rule, decision) (rate(rlhf_sampler_decisions_total[5m]))",
                                     "{{rule}} {{decision}}")], "ops"),
    panel("Not sampled, by reason /s", [("sum by (reason) (rate(rlhf_sampler_rejections_total[5m]))",
                                        "{{reason}}")], "ops"),
    panel("Registry versions", [("rlhf_trainer_model_version_info", "{{kind}} {{pointer}}: {{version}}")],
          kind="table"),
    panel("Serving traffic share", [("rlhf_policy_traffic_share", "{{version}}")], "percentunit"),
    panel("Policy requests /s by version", [("sum by (version, status) (rate(rlhf_policy_requests_total[5m]))",
                                             "{{version}} {{status}}")], "reqps"),
    panel("Rollbacks (24h)", [("sum by (reason) (increase(rlhf_model_rollbacks_total[24h]))", "{{reason}}")],
          kind="stat"),
    row("Annotation"),
    panel("Tasks pending in Argilla", [("sum(rlhf_annotation_tasks_pending)", "pending")], width=8,
          description="pushed but not yet completed; rising = annotators cannot keep up"),
    panel("Annotator agreement (median)", [("histogram_quantile(0.5, sum by (le) (rate(rlhf_annotation_pairwise_agreement_bucket[1h])))",
                                            "agreement")], "percentunit", width=8),
    panel("Preferences since last training", [("rlhf_trainer_preferences_since_last_training", "new")], width=8),
    row("Canary: blind A/B comparisons judged by humans"),
    panel("Live A/B: the canary's comparisons", [("rlhf_canary_ab_comparisons", "{{outcome}}")], kind="stat",
          width=6, description="annotators judging canary vs stable answers to the same prompt, blind"),
    panel("Sequential test statistic", [("rlhf_canary_ab_log_likelihood_ratio", "log likelihood ratio")], width=6,
          description="graduates at log((1-b)/a) (2.94 at the defaults), rolls back at log(b/(1-a)) (-2.94)"),
    panel("Canary win rate (posterior)", [("rlhf_canary_ab_posterior_win_rate", "win rate"),
                                          ("rlhf_canary_ab_prob_not_worse", "P(not worse by the margin)")],
          "percentunit", width=6),
    panel("Canary decisions (7d)", [("sum by (outcome, reason) (increase(rlhf_canary_decisions_total[7d]))",
                                     "{{outcome}} ({{reason}})")], kind="stat", width=6),
    panel("A/B pairs answered /s", [("sum by (result) (rate(rlhf_policy_ab_pairs_total[5m]))", "{{result}}")],
          "ops", width=8),
    panel("Comparisons judged /s", [("sum by (outcome) (rate(rlhf_annotation_comparisons_total[5m]))",
                                     "{{outcome}}")], "ops", width=8),
    panel("Preferences stored by source /s",
          [("sum by (source) (rate(rlhf_trainer_preferences_by_source_total[5m]))", "{{source}}")], "ops", width=8,
          description="ranking tasks, blind comparisons, users' edits and regenerates"),
    row("Training quality over versions"),
    panel("Reward model vs annotators", [("rlhf_trainer_rm_accuracy", "held-out pairs"),
                                         ("rlhf_trainer_rm_live_agreement", "new rankings (live)")],
          "percentunit", width=6,
          description="live: the promoted model on rankings it has never seen, measured before training on them"),
    panel("Candidate vs incumbent (judge)", [("rlhf_trainer_win_rate", "win rate"),
                                             ("rlhf_trainer_win_p_value", "sign-test p")], "percentunit", width=6),
    panel("KL to reference", [("rlhf_trainer_kl", "KL")], width=6),
    panel("Served vs base (demo annotators)", [("rlhf_demo_win_rate_vs_base", "{{version}}")], "percentunit",
          width=6, description="demo only: held-out prompts, judged by the simulated annotators' preference"),
    panel("Stage duration p50", [("histogram_quantile(0.5, sum by (le, stage) (rate(rlhf_trainer_stage_duration_seconds_bucket[1d])))",
                                  "{{stage}}")], "s", width=12),
    panel("Run in progress", [("max(rlhf_trainer_run_active)", "active")], kind="stat", width=12),
    row("Service health"),
    panel("Targets up", [("up{job=~\"rlhf-loop.*\"}", "{{instance}}")], width=8),
    panel("Handler latency p95", [("histogram_quantile(0.95, sum by (le, group) (rate(rlhf_handler_duration_seconds_bucket[5m])))",
                                   "{{group}}")], "s", width=8),
    panel("Seconds since last poll", [("time() - rlhf_consumer_last_poll_timestamp_seconds", "{{group}}")],
          "s", width=8),
    panel("Dead letters /s", [("sum by (group, reason) (rate(rlhf_messages_dead_lettered_total[5m]))",
                               "{{group}} {{reason}}")], "ops", width=8),
    panel("Handler failures /s", [("sum by (group, reason) (rate(rlhf_messages_failed_total[5m]))",
                                   "{{group}} {{reason}}")], "ops", width=8),
    panel("Messages consumed /s", [("sum by (topic, group) (rate(rlhf_messages_consumed_total[5m]))",
                                    "{{group}} ← {{topic}}")], "ops", width=8),
    panel("Capture requests by status code /s", [("sum by (code) (rate(rlhf_capture_requests_total[5m]))",
                                             "{{code}}")], "reqps", width=12),
    panel("Capture latency p95", [("histogram_quantile(0.95, sum by (le) (rate(rlhf_capture_request_duration_seconds_bucket[5m])))",
                                   "p95")], "s", width=12),
]


def dashboard_builder() -> dashboard.Dashboard:
    """Rows are not collapsed, so their panels follow them at the top level (Grafana's model)
    and the SDK lays everything out left to right, wrapping at 24 columns; ids are 1, 2, ..."""
    d = (dashboard.Dashboard("rlhf-loop").uid("rlhf-loop").tags(["rlhf-loop"]).timezone("utc")
         .version(1).refresh("30s").time("now-6h", "now").annotations([])
         .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
                        .hide(models.VariableHide.DONT_HIDE)))
    for i, item in enumerate(PANELS):
        item.id(i + 1)
        d = d.with_row(item) if isinstance(item, dashboard.Row) else d.with_panel(item)
    return d


def render() -> str:
    return json.dumps(dashboard_builder().build(), cls=JSONEncoder, indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
