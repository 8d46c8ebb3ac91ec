"""Runs a service's `main(stop)` as a process: logging, signals, and clear messages
for the failures an operator can fix (bad setting, unreachable broker)."""

from __future__ import annotations

import logging
import os
import threading

from kafka.errors import KafkaTimeoutError
from pydantic import ValidationError

from shared.lifecycle import configure_logging, install_stop_signals
from shared.observability.probes import BrokerUnreachable
from shared.settings import ENV_PREFIX

from .catalog import ServiceMain

log = logging.getLogger(__name__)

# A value under a name like these is never echoed back into logs.
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "API_KEY")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def describe_settings_error(error: ValidationError) -> str:
    """Name each failing setting by the environment variable that sets it."""
    parts = []
    for item in error.errors(include_url=False):
        env_name = ENV_PREFIX + "__".join(str(p) for p in item["loc"]).upper()
        secret = any(word in env_name for word in SECRET_WORDS)
        got = "" if secret else f" (got {item.get('input')!r})"
        parts.append(f"{env_name}: {item['msg']}{got}")
    return "; ".join(parts)


def run_until_signalled(main: ServiceMain) -> int:
    configure_logging(os.environ.get("RLHF_LOG_LEVEL", "INFO"))
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        main(stop)
    except ValidationError as error:
        log.error("bad setting: %s", describe_settings_error(error))
        return EXIT_CONFIG
    except BrokerUnreachable as error:
        log.error("%s", error)
        return EXIT_UNAVAILABLE
    except KafkaTimeoutError as error:
        servers = os.environ.get("RLHF_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092 (default)")
        log.error("lost Kafka at %s: %s", servers, error)
        return EXIT_UNAVAILABLE
    return 0
