"""Wiring only: settings -> store, scorers, completer -> Sampler -> runner."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.runner import ConsumerSpec, run_consumer_service
from shared.topics import OUTPUTS, RANKING_TASKS

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
    )


def build_spec(settings: SamplerSettings, sampler: Sampler) -> ConsumerSpec:
    return ConsumerSpec(
        name="sampler",
        group_id=settings.sampler.group_id,
        topics=[OUTPUTS],
        handler=sampler.handle,
        produces=[RANKING_TASKS],
        ticker=sampler,
        tick_interval_s=settings.sampler.tick_interval_s,
    )


def main(stop: threading.Event) -> None:
    settings = SamplerSettings()
    registry = CollectorRegistry()
    sampler = build_sampler(settings, registry)
    try:
        run_consumer_service(build_spec(settings, sampler), settings, stop, registry=registry)
    finally:
        sampler.close()
