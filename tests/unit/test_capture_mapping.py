"""Pure parts of capture: request schema -> ModelOutput, OpenAI exchange -> ModelOutput,
settings and token handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.capture.auth import with_token
from services.capture.mapping import to_model_output
from services.capture.proxy_mapping import ExchangeLabels, completion_from_sse, message_text
from services.capture.proxy_mapping import to_model_output as proxy_output
from services.capture.schema import OutputIn
from services.capture.settings import CaptureSettings
from shared.contracts import output_id_for
from tests.capture_support import payload


def test_client_request_id_makes_the_output_id_deterministic() -> None:
    body = OutputIn.model_validate(payload("abc"))
    first, second = to_model_output(body), to_model_output(body)
    assert first.event_id == second.event_id == first.output_id == output_id_for("abc")
    anonymous = OutputIn.model_validate(payload())
    changed = OutputIn.model_validate(payload(tenant="other"))
    assert to_model_output(anonymous).event_id == to_model_output(anonymous).event_id  # a retry is one output
    assert to_model_output(anonymous).event_id != to_model_output(changed).event_id
    assert to_model_output(anonymous).event_id != first.event_id


def test_candidate_ids_default_to_their_position_and_feedback_must_name_one() -> None:
    body = payload("x", n=3)
    body["candidates"][1]["id"] = "mine"
    event = to_model_output(OutputIn.model_validate(body))
    assert [c.candidate_id for c in event.candidates] == ["c0", "mine", "c2"]
    with pytest.raises(ValidationError, match="names no candidate"):
        OutputIn.model_validate({**body, "feedback": [{"kind": "edit", "candidate_id": "c1"}]})
    body["candidates"][1]["id"] = "c2"
    with pytest.raises(ValidationError, match="ids must be unique"):
        OutputIn.model_validate(body)


def test_unknown_fields_are_rejected_not_dropped() -> None:
    with pytest.raises(ValidationError) as error:
        OutputIn.model_validate({**payload("x"), "tenent": "typo"})
    assert error.value.errors()[0]["loc"] == ("tenent",)


def test_openai_content_parts_and_roles_are_normalised() -> None:
    assert message_text([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text(None) == ""
    request = {"model": "m", "temperature": 0.2, "user": "u1",
               "messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": "q"}]}
    completion = {"id": "chatcmpl-1", "model": "m-served",
                  "choices": [{"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
                              {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}]}
    labels = ExchangeLabels.from_headers({"x-rlhf-model-version": "v9", "x-rlhf-tags": "x,,y"}, "unknown")
    event = proxy_output(request, completion, labels)
    assert [m.role for m in event.conversation] == ["system", "user"]
    assert [(c.candidate_id, c.text, c.finish_reason) for c in event.candidates] == [
        ("c0", "a", "stop"), ("c1", "b", "length")]
    assert event.candidates[0].model.name == "m-served" and event.candidates[0].model.version == "v9"
    assert event.candidates[0].generation_params == {"temperature": 0.2}
    assert event.tags == ["x", "y"] and event.event_id == output_id_for("chatcmpl-1")


def test_sse_stream_is_reassembled_per_choice() -> None:
    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        body = {"id": "c-9", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\r\n\r\n"

    stream = "".join([chunk(0, {"role": "assistant"}), chunk(1, {"content": "Hel"}), chunk(0, {"content": "Hi"}),
                      chunk(1, {"content": "lo"}), chunk(0, {}, "stop"), chunk(1, {}, "length"),
                      ": keep-alive\n\n", "data: [DONE]\n\n"]).encode()
    completion = completion_from_sse(stream)
    assert completion["id"] == "c-9"
    assert [(c["message"]["content"], c["finish_reason"]) for c in completion["choices"]] == [
        ("Hi", "stop"), ("Hello", "length")]


def test_settings_from_env_keep_the_token_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_CAPTURE__TOKEN", "t0ps3cret")
    monkeypatch.setenv("RLHF_CAPTURE__MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("RLHF_CAPTURE__PROXY_UPSTREAM_URL", "http://vllm:8000/v1/")
    settings = CaptureSettings()
    assert settings.capture.token == SecretStr("t0ps3cret")
    assert "t0ps3cret" not in repr(settings) and "t0ps3cret" not in str(settings.model_dump())
    assert settings.capture.max_body_bytes == 4096
    assert settings.capture.proxy_upstream_url == "http://vllm:8000/v1"


def test_without_a_token_one_is_generated_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLHF_CAPTURE__TOKEN", raising=False)
    settings = CaptureSettings(data_dir=str(tmp_path))
    first = with_token(settings).capture.token
    second = with_token(settings).capture.token
    assert first is not None and first == second and len(first.get_secret_value()) >= 32
    assert with_token(CaptureSettings(data_dir=str(tmp_path / "x"), capture={"auth_disabled": True})).capture.token is None
