"""The sampler: model outputs in; ranking and comparison tasks, and the preferences
users' own feedback states, out (its rules, store, scorers and candidate completer
are built here and owned by the App)."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from shared.app import App
from shared.topics import OUTPUTS, PREFERENCES, RANKING_TASKS

from .completion import CandidateCompleter
from .handlers import Sampler
from .metrics import SamplerMetrics
from .novelty import MiniLMEncoder, NoveltyMemory
from .redaction import Redactor
from shared.models.reward_scorer import RewardScorer, directory_locator, registry_locator
from .settings import SamplerSettings
from .store import SamplerStore


def build_sampler(settings: SamplerSettings, registry: CollectorRegistry) -> Sampler:
    options = settings.sampler
    metrics = SamplerMetrics(registry)
    strategies = {rule.strategy for rule in options.rules}
    reward = None
    if "uncertainty" in strategies:
        locate = (directory_locator(options.reward_model_dir) if options.reward_model_dir
                  else registry_locator(options.registry_dir or Path(settings.data_dir) / "registry"))
        reward = RewardScorer(locate, refresh_s=options.reward_refresh_s)
    novelty = NoveltyMemory(MiniLMEncoder(), options.novelty_memory) if "novelty" in strategies else None
    completer = None
    if options.completion.endpoints:
        completer = CandidateCompleter(
            options.completion, on_outcome=lambda name, outcome: metrics.completions.labels(name, outcome).inc())
    return Sampler(
        options.rules,
        SamplerStore(Path(settings.data_dir) / "sampler" / "sampler.db"),
        metrics,
        dedupe_window_s=options.dedupe_window_s,
        completer=completer,
        redactor=Redactor.from_settings(options.redaction) if options.redaction.enabled else None,
        reward_scorer=reward,
        novelty=novelty,
        comparisons=options.comparisons,
        feedback_preferences=options.feedback_preferences,
    )


def run_service(settings: SamplerSettings, stop: threading.Event, *, registry: CollectorRegistry | None = None,
                on_started=None) -> None:  # type: ignore[no-untyped-def]
    with App("sampler", settings, registry=registry, on_started=on_started) as app:
        sampler = app.own(build_sampler(settings, app.registry))
        # the sampler is its own batch sink: one store transaction per polled batch, whose
        # tasks and preferences go out once it committed (handlers.py)
        app.add_consumer([OUTPUTS], sampler.collect, group_id=settings.sampler.group_id,
                         produces=[RANKING_TASKS, PREFERENCES], ticker=sampler, sink=sampler,
                         tick_interval_s=settings.sampler.tick_interval_s)
        app.run(stop)


def main(stop: threading.Event) -> None:
    run_service(SamplerSettings(), stop)
