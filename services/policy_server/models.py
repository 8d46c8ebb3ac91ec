"""The base policy with its LoRA adapters, one per served version.

PEFT switches adapters on the model object itself, so the model is used under a lock:
one batch's adapter can never leak into another's. Concurrent requests are generated
together (batching.py: who joins which batch; batch_decode.py: one batched generate
with per-request sampling parameters), one version per batch: peft 0.21 can mix
adapters in one pass (`generate(adapter_names=...)`), but a batch per version keeps a
row's computation what it is alone and the adapter switching as it was, and a canary
takes a small share of traffic, so its requests rarely have company anyway. With
`max_batch_size=1` every request is generated alone, as before batching. A stream
(`stream`, n=1) is generated alone too, between batches: its tokens go out as they
are produced. All of it runs on one thread, the batcher's: streams, adapter loads and
unloads are queued there as tasks (batching.py says why one thread: OpenMP). Loading
a new adapter happens beside the serving ones and only then becomes routable, so a reload never drops a request in flight; requests queued for a
version unloaded meanwhile fail with KeyError (the API routes them again).

`close()` is for shutdown: generation cannot be cancelled from outside its thread, and
a request still generating (or queued) after the drain period would hold the process
past its grace period and be killed. Closing stops every generation at its next token
and refuses queued and new ones with `ShuttingDown` (503 to the client, who retries on
another replica); nothing half-generated is ever returned as an answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from .batch_decode import Generation, Sampling, finish, generate_batch
from .batching import Batcher

log = logging.getLogger(__name__)

BASE_VERSION = "base"
T = TypeVar("T")


class ShuttingDown(RuntimeError):
    """The pool was closed: this generation was stopped or never started."""


@dataclass
class StreamedGeneration:
    """Filled in while a stream is consumed; complete once its iterator is exhausted."""

    text: str = ""
    finish_reason: str = "length"
    completion_tokens: int = 0
    error: BaseException | None = None


BatchObserver = Callable[[str, int, int], None]  # version, requests, rows of one batch


class PolicyPool:
    def __init__(self, base_model: Path, device: str | None = None, max_batch_size: int = 8,
                 batch_window_ms: float = 25.0, on_batch: BatchObserver | None = None,
                 batch_gap_ms: float | None = None) -> None:
        """`max_batch_size`: rows (n per request) generated together; 1 = one request
        at a time. `batch_window_ms`: how long the oldest queued request waits for
        others to join; `batch_gap_ms`: but no longer than this after the latest
        arrival (None: the window alone). `on_batch`: told of every batch (metrics)."""
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
        self._on_batch = on_batch
        self._batcher = Batcher(self._run_batch, max_batch_size, batch_window_ms / 1000,
                                None if batch_gap_ms is None else batch_gap_ms / 1000)

    def close(self) -> None:
        """Stop every generation at its next token; refuse new ones (see module doc)."""
        self._closed.set()
        self._batcher.close(ShuttingDown("the policy server is shutting down"))

    @property
    def batch_window_ms(self) -> float:
        return self._batcher.window_s * 1000

    @batch_window_ms.setter
    def batch_window_ms(self, value: float) -> None:
        """Takes effect from the next batch (tests set up versions, then widen it)."""
        self._batcher.window_s = max(0.0, value) / 1000

    @property
    def max_batch_size(self) -> int:
        return self._batcher.max_rows

    @max_batch_size.setter
    def max_batch_size(self, rows: int) -> None:
        """Takes effect from the next batch (a benchmark compares 1 and 8 on one pool)."""
        self._batcher.max_rows = max(1, rows)

    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._batcher.queued()

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

        def attach() -> None:
            with self._lock:
                if version in self._adapters:  # loaded meanwhile by another caller
                    return
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

        self.on_model_thread(attach)
        log.info("loaded policy %s from %s", version, adapter_dir)

    def unload(self, version: str) -> None:
        if version not in self._adapters:
            return

        def detach() -> None:
            with self._lock:
                if version in self._adapters:
                    self._model.delete_adapter(version)
                    del self._adapters[version]

        self.on_model_thread(detach)

    def on_model_thread(self, task: Callable[[], T]) -> T:
        """Run `task` on the batcher's thread, the one thread that touches the model
        (batching.py says why), and wait for it; ShuttingDown once the pool is closed.
        Benchmarks run raw `generate` here too, in the same OpenMP state as the pool."""
        self._refuse_if_closed()
        return self._batcher.call(task).result()

    def generate(self, messages: list[dict[str, str]], version: str, n: int, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None = None) -> list[Generation]:
        """n answers, generated in a batch with whatever else is queued (blocks)."""
        return self.submit(messages, version, n, max_tokens, temperature, top_p, seed).result()

    def submit(self, messages: list[dict[str, str]], version: str, n: int, max_tokens: int,
               temperature: float, top_p: float, seed: int | None = None) -> Future[list[Generation]]:
        """Queue a request for the next batch of its version; the future holds its n
        answers. The prompt is tokenized here, on the caller's thread, beside the batch
        that is generating. Raises KeyError (version not loaded) or ShuttingDown at
        once; the future fails with them when it happens while queued."""
        self._refuse_if_closed()
        if not self.has(version):
            raise KeyError(f"version {version!r} is not loaded")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        sampling = Sampling(list(prompt["input_ids"]), n, max_tokens, temperature, top_p, seed)
        return self._batcher.submit(version, sampling)

    def _run_batch(self, version: str, requests: list[Sampling]) -> list[list[Generation]]:
        """The batcher's thread: one batch of one version, under the model lock."""
        with self._lock, self._adapter(version), torch.no_grad():
            self._refuse_if_closed()
            answers = generate_batch(self._model, self.tokenizer, self.device, requests, [self._stop_when_closed])
            self._refuse_if_closed()
        if self._on_batch is not None:
            self._on_batch(version, len(requests), sum(r.n for r in requests))
        return answers

    def stream(self, messages: list[dict[str, str]], version: str, max_tokens: int, temperature: float,
               top_p: float, seed: int | None = None) -> tuple[Iterator[str], StreamedGeneration]:
        """One answer, token by token as it is generated (text deltas). Generation runs
        on the model thread as a task of its own, between batches; the returned result
        is complete once the iterator ends (it re-raises a generation error, or the
        ShuttingDown of a stream that never started, at the end)."""
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
                final = finish(output[0, input_ids.shape[1]:].tolist(), self.tokenizer)
                result.finish_reason, result.completion_tokens = final.finish_reason, final.completion_tokens
            except BaseException as error:  # surfaced to the consumer of the stream
                result.error = error
                streamer.end()

        self._refuse_if_closed()
        task = self._batcher.call(run)

        def never_ran(future: Future[None]) -> None:  # refused while queued: the pool closed
            if future.exception() is not None and result.error is None:
                result.error = future.exception()
                streamer.end()

        task.add_done_callback(never_ran)

        def deltas() -> Iterator[str]:
            for piece in streamer:
                result.text += piece
                if piece:
                    yield piece
            task.exception()  # the task is over (ran, or refused)
            if result.error is not None:
                raise result.error

        return deltas(), result

    def _refuse_if_closed(self) -> None:
        if self._closed.is_set():
            raise ShuttingDown("the policy server is shutting down")

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
