"""The base policy with its LoRA adapters, one per served version.

PEFT switches adapters on the model object itself, so generation is serialised by a
lock: one request's adapter can never leak into another's. Loading a new adapter
happens beside the serving ones and only then becomes routable, so a reload never
drops a request in flight.

`close()` is for shutdown: generation cannot be cancelled from outside its thread, and
a request still generating (or waiting for the lock) after the drain period would
hold the process past its grace period and be killed. Closing stops every generation
at its next token and refuses new ones with `ShuttingDown` (503 to the client, who
retries on another replica); nothing half-generated is ever returned as an answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BASE_VERSION = "base"


class ShuttingDown(RuntimeError):
    """The pool was closed: this generation was stopped or never started."""


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class StreamedGeneration:
    """Filled in while a stream is consumed; complete once its iterator is exhausted."""

    text: str = ""
    finish_reason: str = "length"
    completion_tokens: int = 0
    error: BaseException | None = None


class PolicyPool:
    def __init__(self, base_model: Path, device: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self._base = AutoModelForCausalLM.from_pretrained(base_model).to(self.device).eval()
        self._model = self._base  # becomes a PeftModel with the first adapter
        self._adapters: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stop_when_closed = _StopWhenClosed(self._closed)

    def close(self) -> None:
        """Stop every generation at its next token; refuse new ones (see module doc)."""
        self._closed.set()

    @property
    def versions(self) -> list[str]:
        return [BASE_VERSION, *self._adapters]

    def has(self, version: str) -> bool:
        return version == BASE_VERSION or version in self._adapters

    def load(self, version: str, adapter_dir: Path) -> None:
        """Load an adapter under its version name (idempotent). Its config and weights
        are read first: PEFT adds an adapter's layers to the model before it reads the
        weights, so a corrupt file found only then would leave them in the serving model."""
        if version in self._adapters:
            return
        from peft import PeftConfig, PeftModel
        from peft.utils import load_peft_weights

        PeftConfig.from_pretrained(str(adapter_dir))
        load_peft_weights(str(adapter_dir), device="cpu")
        with self._lock:
            if self._model is self._base:
                self._model = PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=version)
            else:
                try:
                    self._model.load_adapter(str(adapter_dir), adapter_name=version)
                except Exception:
                    if version in self._model.peft_config:
                        self._model.delete_adapter(version)
                    raise
            self._model.eval()
            self._adapters[version] = adapter_dir
        log.info("loaded policy %s from %s", version, adapter_dir)

    def unload(self, version: str) -> None:
        if version not in self._adapters:
            return
        with self._lock:
            self._model.delete_adapter(version)
            del self._adapters[version]

    def generate(self, messages: list[dict[str, str]], version: str, n: int, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None = None) -> list[Generation]:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        input_ids = prompt["input_ids"].to(self.device)
        attention = prompt["attention_mask"].to(self.device)
        sample = temperature > 0
        with self._lock, self._adapter(version), torch.no_grad():
            self._refuse_if_closed()
            if seed is not None:
                torch.manual_seed(seed)
            output = self._model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_tokens,
                do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
                num_return_sequences=n, pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=[self._stop_when_closed],
            )
            self._refuse_if_closed()
        return [self._finish(row.tolist()) for row in output[:, input_ids.shape[1]:]]

    def stream(self, messages: list[dict[str, str]], version: str, max_tokens: int, temperature: float,
               top_p: float, seed: int | None = None) -> tuple[Iterator[str], StreamedGeneration]:
        """One answer, token by token as it is generated (text deltas). Generation runs
        on its own thread, holding the lock; the returned result is complete once the
        iterator ends (it re-raises a generation error at the end)."""
        from transformers import TextIteratorStreamer

        if not self.has(version):
            raise KeyError(f"version {version!r} is not loaded")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        input_ids = prompt["input_ids"].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        result = StreamedGeneration()
        sample = temperature > 0

        def run() -> None:
            try:
                with self._lock, self._adapter(version), torch.no_grad():
                    self._refuse_if_closed()
                    if seed is not None:
                        torch.manual_seed(seed)
                    output = self._model.generate(
                        input_ids=input_ids, attention_mask=prompt["attention_mask"].to(self.device),
                        max_new_tokens=max_tokens, do_sample=sample, temperature=temperature if sample else None,
                        top_p=top_p if sample else None, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                        stopping_criteria=[self._stop_when_closed])
                    self._refuse_if_closed()
                final = self._finish(output[0, input_ids.shape[1]:].tolist())
                result.finish_reason, result.completion_tokens = final.finish_reason, final.completion_tokens
            except BaseException as error:  # surfaced to the consumer of the stream
                result.error = error
                streamer.end()

        worker = threading.Thread(target=run, name="policy-stream", daemon=True)
        worker.start()

        def deltas() -> Iterator[str]:
            for piece in streamer:
                result.text += piece
                if piece:
                    yield piece
            worker.join()
            if result.error is not None:
                raise result.error

        return deltas(), result

    def _refuse_if_closed(self) -> None:
        if self._closed.is_set():
            raise ShuttingDown("the policy server is shutting down")

    def _finish(self, tokens: list[int]) -> Generation:
        eos = self.tokenizer.eos_token_id
        finished = eos in tokens
        if finished:
            tokens = tokens[: tokens.index(eos)]
        tokens = [t for t in tokens if t != self.tokenizer.pad_token_id]
        return Generation(self.tokenizer.decode(tokens, skip_special_tokens=True),
                          "stop" if finished else "length", len(tokens))

    @contextmanager
    def _adapter(self, version: str) -> Iterator[None]:
        if version == BASE_VERSION:
            if self._model is self._base:
                yield
            else:
                with self._model.disable_adapter():
                    yield
            return
        if version not in self._adapters:
            raise KeyError(f"version {version!r} is not loaded")
        self._model.set_adapter(version)
        yield


class _StopWhenClosed:
    """A transformers stopping criterion: every sequence is done once the pool closes."""

    def __init__(self, closed: threading.Event) -> None:
        self._closed = closed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._closed.is_set(), dtype=torch.bool, device=input_ids.device)
