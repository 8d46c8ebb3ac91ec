"""The capture service: an HTTP ingest (and optional OpenAI proxy) that writes model
outputs to rlhf.outputs; its FastAPI app is served by the App."""

from __future__ import annotations

import logging
import threading

from shared.app import App
from shared.topics import OUTPUTS

from .app import create_app
from .auth import with_token
from .settings import CaptureSettings

log = logging.getLogger(__name__)


def main(stop: threading.Event) -> None:
    settings = with_token(CaptureSettings())
    options = settings.capture
    # max_block_ms: a send waiting for metadata must give up within the time a request
    # may wait for its ack, so a lost broker is a 503, not a hung request. What is still
    # unsent at shutdown was never acknowledged: its requests were answered 503.
    with App("capture", settings, producer_max_block_ms=int(options.publish_timeout_s * 1000)) as app:
        app.produces(OUTPUTS)
        app.use_http_app(create_app(settings, app.producer, app.registry, liveness=app.liveness,
                                    readiness=app.readiness))
        log.info("capture: auth %s, proxy %s", "off" if options.auth_disabled else "on",
                 f"to {options.proxy_upstream_url}" if options.proxy_upstream_url else "off")
        app.run(stop)
