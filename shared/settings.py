"""Settings shared by every service, read from the environment once at start.

All variables use the `RLHF_` prefix and `__` for nesting, e.g.
`RLHF_KAFKA__BOOTSTRAP_SERVERS=kafka:9092` or `RLHF_HTTP__PORT=9100`.
A service adds its own options as one more nested model, e.g.
`RLHF_EVENT_LOGGER__TOPICS=rlhf.outputs`.

Kafka defaults suit both the embedded Tansu broker and a real Kafka cluster:
Tansu holds a group join for half of `session_timeout_ms`, so the default session is
the smallest Kafka accepts (6 s, Kafka's `group.min.session.timeout.ms`), which keeps a
join near 3 s; raise it on a busy production cluster if rebalances flap.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"
ENV_PREFIX = "RLHF_"
KAFKA_ENV = ENV_PREFIX + "KAFKA__"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="comma-separated host:port list"
    )
    client_id: str = "rlhf-loop"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    # consumer group timing (see module docstring)
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1500, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    max_poll_records: int = Field(default=500, ge=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    startup_timeout_s: float = Field(
        default=30.0, gt=0, description="how long a service waits for the broker at start"
    )
    # producer batching
    compression_type: Literal["gzip", "lz4", "snappy", "zstd"] | None = "lz4"
    linger_ms: int = Field(default=5, ge=0)
    batch_size: int = Field(default=262_144, ge=1024)
    max_request_size: int = Field(default=4_194_304, ge=1024)
    delivery_timeout_ms: int = Field(default=120_000, ge=1000)

    @field_validator("ssl_cafile")
    @classmethod
    def _cafile_is_a_readable_ca(cls, cafile: str | None, info: ValidationInfo) -> str | None:
        """Where TLS is used, a CA file that is missing or not PEM fails at start, naming
        the variable, instead of as a handshake error on the first connection."""
        if not cafile or info.data.get("security_protocol") not in ("SSL", "SASL_SSL"):
            return cafile
        var = f"{KAFKA_ENV}SSL_CAFILE"
        if not Path(cafile).is_file():
            raise ValueError(f"{var}={cafile}: no such file (mount the Kafka cluster's CA certificate there, "
                             "e.g. ca.crt of Strimzi's <cluster>-cluster-ca-cert Secret)")
        try:
            ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"{var}={cafile}: not a readable PEM CA certificate ({error})") from None
        return cafile

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> KafkaSettings:
        """A SASL protocol without its mechanism or credentials is named at start (kafka-python
        would only fail on the first connection)."""
        if self.security_protocol.startswith("SASL_"):
            password = self.sasl_password.get_secret_value() if self.sasl_password else ""
            given = {"SASL_MECHANISM": self.sasl_mechanism, "SASL_USERNAME": self.sasl_username,
                     "SASL_PASSWORD": password}
            missing = [KAFKA_ENV + name for name, value in given.items() if not value]
            if missing:
                raise ValueError(f"{KAFKA_ENV}SECURITY_PROTOCOL={self.security_protocol} needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "KafkaSettings":
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.delivery_timeout_ms <= self.linger_ms + self.request_timeout_ms:
            raise ValueError("delivery_timeout_ms must exceed linger_ms + request_timeout_ms")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Options every kafka-python client takes (connection and security)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = self.ssl_cafile
        return kwargs

    def producer_kwargs(self) -> dict[str, Any]:
        # acks=all + idempotence are not settings: the loop's guarantees rest on them.
        return {
            **self.client_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": self.compression_type,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "max_request_size": self.max_request_size,
            "delivery_timeout_ms": self.delivery_timeout_ms,
        }

    def consumer_kwargs(self, group_id: str) -> dict[str, Any]:
        return {
            **self.client_kwargs(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "max_poll_records": self.max_poll_records,
            # a request must outlive the longest group join
            "request_timeout_ms": max(self.request_timeout_ms, self.session_timeout_ms + 5000),
        }


class ConsumerSettings(BaseModel):
    max_attempts: int = Field(default=5, ge=1, description="handler tries before dead-lettering")
    backoff_initial_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=10.0, gt=0)
    poll_timeout_ms: int = Field(default=500, ge=10)
    shutdown_grace_s: float = Field(
        default=20.0, gt=0, description="keep under the pod's terminationGracePeriodSeconds"
    )
    create_topics: bool = Field(
        default=True, description="create missing topics at start (off where Strimzi owns them)"
    )


class HttpSettings(BaseModel):
    host: str = "0.0.0.0"
    port: int = Field(default=9000, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="serve /metrics (and the probes) on this port instead of `port`, so opening the network "
        "to Prometheus does not open the API; unset: /metrics is on `port`")

    @model_validator(mode="after")
    def _distinct_ports(self) -> "HttpSettings":
        if self.metrics_port is not None and self.metrics_port == self.port and self.port != 0:
            raise ValueError("metrics_port must differ from port (RLHF_HTTP__METRICS_PORT, RLHF_HTTP__PORT)")
        return self


class ServiceSettings(BaseSettings):
    """The base every service's settings extend."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    http: HttpSettings = HttpSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: str = Field(default="./.rlhf-loop", description="durable state of embedded mode")
    models_dir: str = Field(default="", description="prepared base models; empty: DATA_DIR/models")
    gc_freeze: bool = Field(default=True, description="freeze the start-up heap out of the garbage "
                                                      "collector's full passes once the service is built")

    @property
    def default_base_model(self) -> str:
        """Where `rlhf-loop models smollm2` puts SmolLM2-135M-Instruct: every service's
        default base policy (and the reward model's backbone)."""
        return str(Path(self.models_dir or Path(self.data_dir) / "models") / DEFAULT_BASE_MODEL_NAME)
