"""Runs a service's `main(stop)` as a process: logging, signals, and clear messages
for the failures an operator can fix (bad setting, unreachable broker)."""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from kafka.errors import KafkaTimeoutError
from pydantic import SecretBytes, SecretStr, ValidationError
from pydantic_settings import SettingsError

from shared.lifecycle import configure_logging, install_stop_signals
from shared.observability.probes import BrokerUnreachable
from shared.settings import ENV_PREFIX

from .catalog import ServiceMain

log = logging.getLogger(__name__)

# A value under a name like these is never echoed back into logs.
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "API_KEY")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def is_secret_name(name: str) -> bool:
    upper = name.upper().replace("-", "_")
    return any(word in upper for word in SECRET_WORDS) or upper.endswith("KEY")


def redact(value: Any) -> Any:
    """`value` with every secret replaced, at any depth: SecretStr/SecretBytes by type,
    anything under a secret-sounding key by name. A string that is JSON is redacted as
    the structure it holds; one that is not (it may be a secret that failed to parse)
    is shown only by its length."""
    if isinstance(value, SecretStr | SecretBytes):
        return "***"
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and is_secret_name(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return redact(json.loads(value))
        except ValueError:
            return f"<{len(value)} characters, not valid JSON>"
    return value


def describe_settings_error(error: ValidationError | SettingsError) -> str:
    """Name each failing setting by the environment variable that sets it; values are
    shown redacted (a secret is never echoed into logs)."""
    if isinstance(error, SettingsError):  # a value that is not even valid JSON
        field = str(error).split('"')[1] if '"' in str(error) else "?"
        return f"{ENV_PREFIX}{field.upper()}__*: a value is not valid JSON (value not shown: it may hold a secret)"
    parts = []
    for item in error.errors(include_url=False):
        env_name = ENV_PREFIX + "__".join(str(p) for p in item["loc"]).upper()
        got = "" if is_secret_name(env_name) else f" (got {redact(item.get('input'))!r})"
        parts.append(f"{env_name}: {item['msg']}{got}")
    return "; ".join(parts)


def run_until_signalled(main: ServiceMain) -> int:
    configure_logging(os.environ.get("RLHF_LOG_LEVEL", "INFO"))
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        main(stop)
    except (ValidationError, SettingsError) as error:
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
