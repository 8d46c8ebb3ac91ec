from __future__ import annotations

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from shared.bus.codec import decode
from shared.bus.dead_letter import dead_letter_headers, header_map
from shared.bus.errors import PoisonMessage
from shared.contracts import ModelOutput
from shared.settings import KafkaSettings, ServiceSettings
from tests import factories


def test_decode_round_trip() -> None:
    output = factories.model_output()
    assert decode(output.to_json_bytes(), ModelOutput) == output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"event_id": "x"}', "output_id: Field required"),
        (None, "tombstone"),
    ],
)
def test_decode_failures_are_poison_with_a_readable_reason(value: bytes | None, expected: str) -> None:
    with pytest.raises(PoisonMessage) as caught:
        decode(value, ModelOutput)
    assert expected in caught.value.reason


def _record(headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord(topic="rlhf.outputs", partition=2, leader_epoch=0, offset=41, timestamp=0,
                          timestamp_type=0, key=b"k", value=b"v", headers=headers, checksum=None,
                          serialized_key_size=1, serialized_value_size=1, serialized_header_size=0)


def test_dead_letter_headers_carry_origin_and_reason_and_replace_old_ones() -> None:
    record = _record([("trace", b"abc"), ("dlq.reason", b"old")])
    headers = header_map(dead_letter_headers(record, group_id="sampler", kind="poison",
                                             reason="bad field", error_type="PoisonMessage", attempts=1))
    assert headers["trace"] == "abc"
    assert headers["dlq.reason"] == "bad field"
    assert headers["dlq.origin.topic"] == "rlhf.outputs"
    assert headers["dlq.origin.partition"] == "2"
    assert headers["dlq.origin.offset"] == "41"
    assert headers["dlq.group"] == "sampler"
    assert int(headers["dlq.failed_at_ms"]) > 0


def test_settings_read_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("RLHF_KAFKA__SESSION_TIMEOUT_MS", "12000")
    monkeypatch.setenv("RLHF_HTTP__PORT", "9555")
    settings = ServiceSettings()
    assert settings.kafka.client_kwargs()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert settings.kafka.consumer_kwargs("g")["session_timeout_ms"] == 12000
    assert settings.http.port == 9555


def test_producer_is_always_acks_all_and_idempotent() -> None:
    kwargs = KafkaSettings().producer_kwargs()
    assert kwargs["acks"] == "all"
    assert kwargs["enable_idempotence"] is True
    consumer = KafkaSettings().consumer_kwargs("g")
    assert consumer["enable_auto_commit"] is False
    assert consumer["group_id"] == "g"


def test_inconsistent_kafka_timings_are_rejected() -> None:
    with pytest.raises(ValidationError, match="heartbeat_interval_ms"):
        KafkaSettings(session_timeout_ms=3000, heartbeat_interval_ms=2000)
    with pytest.raises(ValidationError, match="delivery_timeout_ms"):
        KafkaSettings(delivery_timeout_ms=20_000)


def test_secrets_stay_out_of_repr() -> None:
    settings = KafkaSettings(sasl_mechanism="PLAIN", sasl_username="u", sasl_password="hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.client_kwargs()["sasl_plain_password"] == "hunter2"


def test_a_settings_error_never_prints_a_secret_nested_in_a_json_value(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Review found an endpoint's api_key printed in full: the error was on a sibling
    field of the same JSON value."""
    import pytest
    from pydantic import ValidationError

    from pydantic_settings import SettingsError

    from services.launch import describe_settings_error
    from services.sampler.settings import SamplerSettings

    leaked = "sk-live-very-secret-0123456789"
    monkeypatch.setenv("RLHF_SAMPLER__COMPLETION__ENDPOINTS",
                       '[{"base_url": "http://llm:8000/v1", "model": "m", "api_key": "%s", "timeout_s": "soon"}]'
                       % leaked)
    with pytest.raises(ValidationError) as error:
        SamplerSettings()
    described = describe_settings_error(error.value)
    assert "RLHF_SAMPLER__COMPLETION__ENDPOINTS" in described
    assert leaked not in described and "***" in described
    monkeypatch.setenv("RLHF_SAMPLER__COMPLETION__ENDPOINTS", '[{"api_key": "%s", ' % leaked)  # not JSON at all
    with pytest.raises(SettingsError) as unparsable:
        SamplerSettings()
    assert leaked not in describe_settings_error(unparsable.value)
    assert "RLHF_SAMPLER" in describe_settings_error(unparsable.value)
