"""The policy server on the App: the pool and router, the OpenAI API, the consumer
of rlhf.model-updates and the periodic reconciliation with the registry."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from shared.app import App
from shared.auth import token_or_generated
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


def main(stop: threading.Event) -> None:
    """The OpenAI-compatible API over the policy pool; model updates in (reloads,
    canaries, rollbacks); served outputs out to rlhf.outputs when capture is on."""
    settings = PolicyServerSettings()
    options = settings.policy_server
    # Half the grace period for requests in flight to finish; then generation still
    # running is stopped (503) so the process exits before it would be killed.
    drain_s = settings.consumer.shutdown_grace_s / 2
    # capture must never hold a request: a full buffer fails the send at once
    with App("policy-server", settings, producer_max_block_ms=100, http_graceful_s=drain_s) as app:
        metrics = PolicyServerMetrics(app.registry)
        registry_dir = Path(options.registry_dir or Path(settings.data_dir) / "registry")
        pool = PolicyPool(base_model_path(settings), max_batch_size=options.max_batch_size,
                          batch_window_ms=options.batch_window_ms, batch_gap_ms=options.batch_gap_ms,
                          on_batch=metrics.observe_batch)
        router = Router(seed=options.canary_seed)
        app.produces(OUTPUTS)
        http_app = create_app(
            pool=pool, router=router, metrics=metrics, registry=app.registry,
            served_model_name=options.served_model_name, max_tokens_default=options.max_tokens_default,
            max_tokens_limit=options.max_tokens_limit, max_n=options.max_n, max_body_bytes=options.max_body_bytes,
            producer=app.producer if options.capture else None, readiness=app.readiness, liveness=app.liveness,
            api_key=None if options.auth_disabled else token_or_generated(
                options.api_key, Path(settings.data_dir) / "policy-server" / "api-key", "RLHF_POLICY_SERVER__API_KEY"),
            serve_metrics=settings.http.metrics_port is None, ab_share=options.ab_share,
            ab_seed=options.ab_seed if options.ab_seed is not None else options.canary_seed,
            ab_max_pending=options.ab_max_pending)
        # Closed in reverse: after the HTTP drain the pool stops what is generating, then
        # the A/B worker captures the picks it did not answer alone (the producer is last).
        app.own(http_app.state.ab)
        app.own(pool)
        versions = VersionManager(pool, router, registry_dir, metrics, options.health_check_prompt,
                                  options.canary_graduate_after_s, options.canary_fraction)
        versions.start_from_registry()
        app.add_consumer([MODEL_UPDATES], versions.handle, group_id=options.group_id,
                         dead_letters=options.dead_letter_topic)
        app.add_periodic("versions", 5.0, versions.tick)
        app.use_http_app(http_app)
        log.info("policy-server: serving %s", options.served_model_name)
        app.run(stop)
