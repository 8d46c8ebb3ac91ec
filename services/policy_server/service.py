"""Wiring only: the policy pool and router, the HTTP API (uvicorn), and a consumer
loop on rlhf.model-updates that drives reloads, all stopped in reverse order."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from shared.auth import token_or_generated
from shared.bus import ConsumerLoop, EventProducer
from shared.bus.admin import ensure_topics
from shared.observability.http import metrics_server
from shared.observability.metrics import BusMetrics
from shared.observability.probes import kafka_reachable, wait_until_reachable
from shared.topics import MODEL_UPDATES, OUTPUTS

from .api import create_app
from .metrics import PolicyServerMetrics
from .models import PolicyPool
from .routing import Router
from .settings import PolicyServerSettings
from .versions import VersionManager

log = logging.getLogger(__name__)


def base_model_path(settings: PolicyServerSettings) -> Path:
    """The configured base model (default: SmolLM2-135M-Instruct as `rlhf-loop models
    smollm2` prepares it). Missing, the service says how to get it instead of serving."""
    path = Path(settings.policy_server.base_model or settings.default_base_model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no base model at {path}: run `rlhf-loop models smollm2 {path}` or set "
                                "RLHF_POLICY_SERVER__BASE_MODEL")
    return path


def drain_http(server: uvicorn.Server, http: threading.Thread, pool: PolicyPool, drain_s: float) -> None:
    """Stop accepting, let requests in flight finish for `drain_s`, then stop the
    generations still running and wait for the server to close."""
    server.should_exit = True
    http.join(drain_s + 1)
    pool.close()
    http.join(10)
    if http.is_alive():
        log.warning("policy-server: HTTP server still closing after the drain period")


def main(stop: threading.Event) -> None:
    settings = PolicyServerSettings()
    options = settings.policy_server
    registry = CollectorRegistry()
    bus_metrics = BusMetrics.of(registry).declare(options.group_id, [MODEL_UPDATES], [OUTPUTS], options.dead_letter_topic)
    metrics = PolicyServerMetrics(registry)
    registry_dir = Path(options.registry_dir or Path(settings.data_dir) / "registry")
    pool = PolicyPool(base_model_path(settings))
    router = Router(seed=options.canary_seed)
    versions = VersionManager(pool, router, registry_dir, metrics, options.health_check_prompt,
                              options.canary_graduate_after_s, options.canary_fraction)
    versions.start_from_registry()
    wait_until_reachable(settings.kafka)
    if settings.consumer.create_topics:
        ensure_topics(settings.kafka, [(MODEL_UPDATES.name, MODEL_UPDATES.partitions),
                                       (OUTPUTS.name, OUTPUTS.partitions), (options.dead_letter_topic, 1)])
    with ExitStack() as stack:
        # capture must never hold a request: a full buffer fails the send at once
        producer = EventProducer(settings.kafka, bus_metrics, max_block_ms=100)
        stack.callback(producer.close)
        loop = ConsumerLoop(topics=[MODEL_UPDATES], group_id=options.group_id, handler=versions.handle,
                            kafka=settings.kafka, consumer=settings.consumer, producer=producer,
                            metrics=bus_metrics, stop=stop, ticker=versions, tick_interval_s=5.0,
                            dead_letters=options.dead_letter_topic)
        stack.callback(loop.close)
        app = create_app(pool=pool, router=router, metrics=metrics, registry=registry,
                         served_model_name=options.served_model_name, max_tokens_default=options.max_tokens_default,
                         max_tokens_limit=options.max_tokens_limit, max_n=options.max_n,
                         max_body_bytes=options.max_body_bytes,
                         producer=producer if options.capture else None,
                         readiness={"kafka": kafka_reachable(settings.kafka)},
                         api_key=None if options.auth_disabled else token_or_generated(
                             options.api_key, Path(settings.data_dir) / "policy-server" / "api-key",
                             "RLHF_POLICY_SERVER__API_KEY"),
                         serve_metrics=settings.http.metrics_port is None)
        # Half the grace period for requests in flight to finish; then generation still
        # running is stopped (503) so the process exits before it would be killed.
        drain_s = settings.consumer.shutdown_grace_s / 2
        server = uvicorn.Server(uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                                               log_level="warning", timeout_graceful_shutdown=max(1, int(drain_s))))
        http = threading.Thread(target=server.run, name="policy-http", daemon=True)
        http.start()
        stack.callback(drain_http, server, http, pool, drain_s)
        metrics_only = metrics_server(settings.http, registry, liveness={"http": http.is_alive},
                                      readiness={"kafka": kafka_reachable(settings.kafka)})
        if metrics_only is not None:
            stack.enter_context(metrics_only)
        log.info("policy-server: serving %s on :%d", options.served_model_name, settings.http.port)
        loop.run()  # until stop; in-flight HTTP requests finish during uvicorn's graceful shutdown
    log.info("policy-server: stopped cleanly")
