"""The batch scheduler alone (no model): who joins which batch, per version, within
the row limit, the oldest first; closing and cancellation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from services.policy_server.batch_decode import Generation, Sampling
from services.policy_server.batching import Batcher


class Recorder:
    """A `run` that records every batch and waits for the test to release it."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail: BaseException | None = None

    def __call__(self, version: str, requests: list[Sampling]) -> list[list[Generation]]:
        self.batches.append((version, [r.prompt_ids[0] for r in requests]))
        self.started.set()
        assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return [[Generation(f"{version}:{r.prompt_ids[0]}:{i}", "stop", 1) for i in range(r.n)] for r in requests]


def request(tag: int, n: int = 1) -> Sampling:
    return Sampling([tag], n, 4, 0.0, 1.0)


def test_requests_queued_while_a_batch_runs_form_the_next_batches_per_version_within_the_row_limit() -> None:
    run = Recorder()
    batcher = Batcher(run, max_rows=4, window_s=0.0)
    first = batcher.submit("a", request(0))
    assert run.started.wait(5)  # generating: everything below queues behind it
    futures = [batcher.submit(version, request(tag, n)) for tag, version, n in
               [(1, "a", 1), (2, "b", 1), (3, "a", 3), (4, "a", 2), (5, "b", 1), (6, "a", 1)]]
    run.release.set()
    answers = [f.result(10) for f in [first, *futures]]
    assert run.batches == [("a", [0]),
                           ("a", [1, 3]),  # 1 + 3 rows fill it; 4 (2 rows) no longer fits
                           ("b", [2, 5]),  # the oldest left is b's
                           ("a", [4, 6])]
    assert answers[3] == [Generation("a:3:0", "stop", 1), Generation("a:3:1", "stop", 1),
                          Generation("a:3:2", "stop", 1)]


def test_a_request_larger_than_the_limit_runs_alone_and_a_failure_fails_its_whole_batch() -> None:
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=2, window_s=0.0)
    assert len(batcher.submit("a", request(0, n=5)).result(10)) == 5
    run.fail = KeyError("version 'a' is not loaded")
    with pytest.raises(KeyError):
        batcher.submit("a", request(1)).result(10)


def test_the_window_waits_for_company_and_a_full_batch_does_not_wait() -> None:
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=3, window_s=30.0)
    futures = [batcher.submit("a", request(tag)) for tag in range(3)]  # full at once: no 30 s wait
    assert [f.result(5)[0].text for f in futures] == ["a:0:0", "a:1:0", "a:2:0"]
    assert run.batches == [("a", [0, 1, 2])]


def test_closing_fails_what_is_queued_refuses_new_requests_and_cancelled_ones_are_dropped() -> None:
    run = Recorder()
    batcher = Batcher(run, max_rows=1, window_s=0.0)
    generating = batcher.submit("a", request(0))
    assert run.started.wait(5)
    cancelled, queued = batcher.submit("a", request(1)), batcher.submit("a", request(2))
    assert cancelled.cancel()
    assert batcher.queued() == 2
    batcher.close(RuntimeError("closing"))
    with pytest.raises(RuntimeError, match="closing"):
        queued.result(5)
    with pytest.raises(CancelledError):
        cancelled.result(5)
    with pytest.raises(RuntimeError, match="closing"):
        batcher.submit("a", request(3))
    run.release.set()
    assert generating.result(5)[0].text == "a:0:0"  # the pool's own close stops a batch in progress
    assert run.batches == [("a", [0])]


def test_a_task_runs_on_the_batcher_thread_before_requests_waiting_out_their_window() -> None:
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=4, window_s=30.0)
    waiting = batcher.submit("a", request(0))  # waits up to 30 s for company
    ran_on = batcher.call(lambda: (threading.current_thread().name, len(run.batches))).result(5)
    assert ran_on == ("policy-batcher", 0)  # at once, on the model thread, no batch before it
    assert not waiting.done() and batcher.queued() == 1  # the request kept its place
    failing = batcher.call(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    batcher.close(RuntimeError("closing"))
    with pytest.raises(RuntimeError, match="closing"):
        waiting.result(5)
    with pytest.raises(RuntimeError, match="closing"):
        batcher.call(lambda: None)


def test_with_a_gap_a_lone_request_does_not_wait_out_the_window_and_a_burst_is_one_batch() -> None:
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=4, window_s=30.0, gap_s=0.3)
    assert batcher.submit("a", request(0)).result(5)[0].text == "a:0:0"  # not the 30 s window
    burst = [batcher.submit("a", request(tag)) for tag in (1, 2, 3)]  # each within 0.3 s of the last
    assert [f.result(5)[0].text for f in burst] == ["a:1:0", "a:2:0", "a:3:0"]
    assert run.batches == [("a", [0]), ("a", [1, 2, 3])]


def test_the_gap_waits_for_as_many_rows_as_the_last_batch_had_within_the_window() -> None:
    """Eight users answered together come back spread over more than a gap: their next
    requests still make one batch (up to the window), while a lone user, whose last
    batch was one row, never waits for company."""
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=4, window_s=5.0, gap_s=0.05)
    assert batcher.submit("a", request(0)).result(5)  # a lone user: the gap, not the window
    first = [batcher.submit("a", request(tag)) for tag in (1, 2, 3)]  # a burst within the gap
    assert all(f.result(5) for f in first)
    later = []
    for tag in (4, 5, 6):  # the same three users again, each well over a gap after the last
        later.append(batcher.submit("a", request(tag)))
        time.sleep(0.2)
    assert all(f.result(10) for f in later)
    assert run.batches == [("a", [0]), ("a", [1, 2, 3]), ("a", [4, 5, 6])]


def test_a_lone_user_back_with_nobody_a_second_time_no_longer_waits_for_the_gap() -> None:
    """The first two requests of one user each wait the gap for company that might be
    coming; once the second came alone, the third starts at once. A second user ends
    it: the one batch that user loses, then the two are batched together, and a batch
    waits for company again."""
    run = Recorder()
    run.release.set()
    batcher = Batcher(run, max_rows=4, window_s=1.0, gap_s=0.5)

    def timed(tag: int) -> float:
        started = time.monotonic()
        assert batcher.submit("a", request(tag)).result(5)
        return time.monotonic() - started

    assert timed(0) >= 0.5 and timed(1) >= 0.5  # a new user: company may be coming
    assert timed(2) < 0.25 and timed(3) < 0.25  # the same user, alone again: no wait
    run.release.clear()
    run.started.clear()
    four = batcher.submit("a", request(4))  # the lone user, at once
    assert run.started.wait(5)
    five = batcher.submit("a", request(5))  # a second user, while that batch runs
    run.release.set()
    assert four.result(5)
    six = batcher.submit("a", request(6))  # the first user back: one batch with the second
    assert five.result(5) and six.result(5)
    assert run.batches[-2:] == [("a", [4]), ("a", [5, 6])]
    assert timed(7) >= 0.5  # the last batch was two users': their company is awaited


def test_a_request_that_waited_through_a_batch_waits_a_window_more_for_the_users_it_answered() -> None:
    """Its own window passed while the batch ran; starting it at once would leave the
    three users coming back from that batch for a batch of their own."""
    run = Recorder()
    batcher = Batcher(run, max_rows=4, window_s=1.0, gap_s=0.05)
    running = [batcher.submit("a", request(tag)) for tag in (1, 2, 3)]
    assert run.started.wait(5)
    time.sleep(0.1)  # the three run together
    waiting = batcher.submit("a", request(9))  # arrives during the batch
    time.sleep(1.2)  # longer than its window
    run.release.set()
    assert all(f.result(5) for f in running)
    back = []
    for tag in (4, 5, 6):  # the three answered users, one after another
        back.append(batcher.submit("a", request(tag)))
        time.sleep(0.1)
    assert waiting.result(5) and all(f.result(5) for f in back)
    assert run.batches == [("a", [1, 2, 3]), ("a", [9, 4, 5, 6])]
