"""The one shape of every service: an `App` that owns its resources and declares what
the service consumes, produces, runs periodically and serves.

    with App("trainer", settings) as app:          # waits for the broker, once
        store = app.own(open_store(settings))      # closed at exit, in reverse order
        app.add_consumer([PREFERENCES], handler, group_id="trainer", produces=[TRAINING_RUNS])
        app.add_periodic("training-trigger", 30, trigger.check)
        app.add_routes(runs_router(coordinator))
        app.run(stop)                               # until SIGTERM sets `stop`

`run` creates the topics every consumer reads and writes (their dead-letter topics
included) when RLHF_CONSUMER__CREATE_TOPICS is on, serves the routes with /metrics,
/healthz and /readyz on one FastAPI app (metrics on their own port with
RLHF_HTTP__METRICS_PORT), runs periodic jobs on one APScheduler (never two runs of a
job at once, a late run folded into the next), and runs the consumer loops until
`stop`. Every producer is metered (`rlhf_bus_*`). On the way out the consumer loops
finish their batch and commit it, then everything is closed in the reverse order it
was opened: the HTTP servers (requests in flight get the grace period), the scheduler,
the consumers, what the service handed to `own` and `on_stop`, the shared producer
last.

In the spirit of quix-streams' `Application` and faststream's declared topology, at
the size of this project.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from shared.bus import BatchSink, ConsumerLoop, EventProducer, Handler, Ticker
from shared.bus.admin import ensure_topics
from shared.lifecycle import freeze_heap
from shared.observability.metrics import BusMetrics
from shared.observability.probes import kafka_reachable, wait_until_reachable
from shared.settings import ServiceSettings
from shared.topics import Topic, dead_letter_topic
from shared.web import AppServer, Checks, ops_app, ops_router

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Listener:
    """Routes served on a port of their own (`add_routes(..., port=)`); `port` is the
    bound one once the app runs (0 asks for a free one)."""

    host: str
    port: int
    routers: list[Any] = field(default_factory=list)


@dataclass
class ConsumerDecl:
    topics: Sequence[Topic]
    handler: Handler
    group_id: str
    produces: Sequence[Topic] = ()
    ticker: Ticker | None = None
    tick_interval_s: float = 1.0
    sink: BatchSink | None = None
    dead_letters: str | None = None

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letters or dead_letter_topic(self.group_id)


class App:
    """One service's resources and declarations; see the module docstring.

    `producer_max_block_ms`: how long a send may wait for metadata or buffer space (an
    HTTP service that must answer quickly sets it low). `http_graceful_s`: how long
    requests in flight may take to finish at shutdown (default: the consumer's grace
    period). `kafka=False`: a service that talks to the loop over HTTP only (no broker
    wait, no Kafka readiness). `registry`: the service's
    Prometheus registry (tests pass their own). `on_started(app)` runs once everything
    serves (tests read `app.http_port`)."""

    def __init__(self, name: str, settings: ServiceSettings, *, registry: CollectorRegistry | None = None,
                 producer_max_block_ms: int | None = None, kafka: bool = True,
                 http_graceful_s: float | None = None,
                 on_started: Callable[[App], None] | None = None) -> None:
        self.name, self.settings = name, settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.bus_metrics = BusMetrics.of(self.registry)
        self.liveness: dict[str, Callable[[], bool]] = {}
        self.readiness: dict[str, Callable[[], bool]] = {"kafka": kafka_reachable(settings.kafka)} if kafka else {}
        self._uses_kafka = kafka
        self._workers: list[tuple[str, Callable[[threading.Event], Any]]] = []
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._producer_max_block_ms = producer_max_block_ms
        self._http_graceful_s = http_graceful_s
        self._on_started = on_started
        self._stack = ExitStack()
        self._producer: EventProducer | None = None
        self._consumers: list[ConsumerDecl] = []
        self._produces: list[Topic] = []
        self._extra_topics: list[tuple[str, int]] = []
        self._periodic: list[tuple[str, float, Callable[[], Any], bool]] = []
        self._routers: list[Any] = []
        self._listeners: list[Listener] = []
        self._http_app: Any = None
        self._scheduler: Any = None
        self._entered = False

    # -- resources ----------------------------------------------------------------

    def __enter__(self) -> App:
        if self._uses_kafka:
            wait_until_reachable(self.settings.kafka)
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            if self._producer is not None:  # last: everything above may still have sent
                try:
                    self._producer.close(timeout_s=self.settings.consumer.shutdown_grace_s)
                except KafkaError as error:  # unacknowledged sends were never reported as done
                    log.warning("%s: closed the producer with unacknowledged events pending: %s", self.name, error)
        log.info("%s: stopped cleanly", self.name)

    def own(self, resource: T, close: Callable[[T], Any] | None = None) -> T:
        """Close `resource` when the app stops (its `close()`, or `close(resource)`), in
        reverse order of ownership; a context manager is entered now and exited then."""
        if close is not None:
            self._stack.callback(close, resource)
        elif isinstance(resource, AbstractContextManager):
            return self._stack.enter_context(resource)  # type: ignore[return-value]
        else:
            self._stack.callback(resource.close)  # type: ignore[attr-defined]
        return resource

    def on_stop(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `callback` when the app stops, in the same reverse order as `own`."""
        self._stack.callback(callback, *args, **kwargs)

    @property
    def producer(self) -> EventProducer:
        """The service's producer (metered; closed last). Created on first use."""
        if self._producer is None:
            self._require_entered()
            kwargs = {} if self._producer_max_block_ms is None else {"max_block_ms": self._producer_max_block_ms}
            self._producer = EventProducer(self.settings.kafka, self.bus_metrics, **kwargs)
        return self._producer

    # -- declarations -------------------------------------------------------------

    def produces(self, *topics: Topic) -> None:
        """Topics this service writes outside a consumer (an HTTP ingest, a scheduled job)."""
        self._produces.extend(topics)
        self.bus_metrics.declare(produces=topics)

    def declare_topic(self, name: str, partitions: int = 1) -> None:
        """A topic by name only (a dead-letter topic shared by replicas)."""
        self._extra_topics.append((name, partitions))

    def add_consumer(self, topics: Sequence[Topic], handler: Handler, *, group_id: str,
                     produces: Sequence[Topic] = (), ticker: Ticker | None = None, tick_interval_s: float = 1.0,
                     sink: BatchSink | None = None, dead_letters: str | None = None) -> ConsumerDecl:
        """A consumer loop on `topics` (rebalance-safe, dead letters, per-partition pause:
        shared/bus). `produces`: the topics its handler's outgoing records go to."""
        decl = ConsumerDecl(list(topics), handler, group_id, list(produces), ticker, tick_interval_s, sink,
                            dead_letters)
        self._consumers.append(decl)
        self.bus_metrics.declare(group_id, decl.topics, decl.produces, decl.dead_letter_topic)
        return decl

    def add_periodic(self, name: str, interval_s: float, job: Callable[[], Any], *,
                     run_at_start: bool = False) -> None:
        """`job` every `interval_s` on the app's scheduler; never two runs at once, a late
        run folded into the next. A job that raises is logged and runs again next time."""
        self._periodic.append((name, interval_s, job, run_at_start))

    def run_soon(self, name: str) -> None:
        """Bring the next run of periodic job `name` forward to now (a run in progress
        finishes first; a burst of calls folds into one run)."""
        if self._scheduler is not None and (job := self._scheduler.get_job(name)) is not None:
            job.modify(next_run_time=datetime.now(timezone.utc))

    def remove_periodic(self, name: str) -> None:
        if self._scheduler is not None and self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def add_routes(self, router: Any, *, host: str | None = None, port: int | None = None) -> Listener | None:
        """A FastAPI APIRouter served on the service's HTTP port beside the probes, or,
        with `port`, on a port of its own (what a network policy opens to one caller
        only, e.g. Argilla's webhooks): same stack, own socket. Returns that listener."""
        if port is None:
            self._routers.append(router)
            return None
        listener = Listener(host or self.settings.http.host, port, [router])
        self._listeners.append(listener)
        return listener

    def use_http_app(self, app: Any) -> None:
        """A whole FastAPI app of the service's own (its lifespan, middleware), served
        instead of the default one. It serves the probes itself, with `ops_router` over
        this app's `liveness` and `readiness` (pass the dicts: checks added later, such
        as the consumer's, show up), and /metrics unless RLHF_HTTP__METRICS_PORT is set."""
        self._http_app = app

    def add_worker(self, name: str, work: Callable[[threading.Event], Any]) -> None:
        """`work(stop)` on a thread of its own for the app's life (it returns when `stop`
        is set); the app is alive while every worker is."""
        self._workers.append((name, work))

    def add_readiness(self, name: str, check: Callable[[], bool]) -> None:
        self.readiness[name] = check

    def add_liveness(self, name: str, check: Callable[[], bool]) -> None:
        self.liveness[name] = check

    # -- running ------------------------------------------------------------------

    def topology(self) -> list[tuple[str, int]]:
        """Every topic this app reads or writes, dead-letter topics included."""
        wanted: dict[str, int] = {}
        for decl in self._consumers:
            for topic in (*decl.topics, *decl.produces):
                wanted[topic.name] = topic.partitions
            wanted.setdefault(decl.dead_letter_topic, 1)
        for topic in self._produces:
            wanted[topic.name] = topic.partitions
        for name, partitions in self._extra_topics:
            wanted.setdefault(name, partitions)
        return sorted(wanted.items())

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; the resources close when the `with` block ends."""
        self._require_entered()
        settings = self.settings
        if settings.consumer.create_topics:
            topics = self.topology()
            if topics:
                ensure_topics(settings.kafka, topics)
        loops = [self._make_loop(decl, stop) for decl in self._consumers]
        self._serve_http()  # before the jobs: one may need a bound port (the webhook's URL)
        if self._periodic:
            self._start_scheduler()
        log.info("%s: consuming %s; http on :%s%s", self.name,
                 sorted({t.name for d in self._consumers for t in d.topics}) or "nothing", self.http_port,
                 f", metrics on :{self.metrics_port}" if self.metrics_port != self.http_port else "")
        if settings.gc_freeze:  # built: what is on the heap now stays for the service's life
            frozen = freeze_heap()
            log.debug("%s: %d start-up objects frozen out of full collections", self.name, frozen)
        if self._on_started is not None:
            self._on_started(self)
        threads = [threading.Thread(target=loop.run, name=f"consumer-{decl.group_id}", daemon=True)
                   for loop, decl in zip(loops[1:], self._consumers[1:], strict=True)]
        for name, work in self._workers:
            worker = threading.Thread(target=work, args=(stop,), name=name, daemon=True)
            self.liveness[f"worker:{name}"] = worker.is_alive
            threads.append(worker)
        for thread in threads:
            thread.start()
        try:
            if loops:
                loops[0].run()
            else:
                while not stop.wait(0.5):  # an HTTP-only service ends if its server does
                    if not self.liveness["http"]():
                        raise RuntimeError(f"{self.name}: the HTTP server stopped unexpectedly")
        finally:
            stop.set()
            for thread in threads:
                thread.join(settings.consumer.shutdown_grace_s)

    def _make_loop(self, decl: ConsumerDecl, stop: threading.Event) -> ConsumerLoop:
        settings = self.settings
        loop = ConsumerLoop(topics=decl.topics, group_id=decl.group_id, handler=decl.handler, kafka=settings.kafka,
                            consumer=settings.consumer, producer=self.producer, metrics=self.bus_metrics, stop=stop,
                            ticker=decl.ticker, tick_interval_s=decl.tick_interval_s, sink=decl.sink,
                            dead_letters=decl.dead_letters)
        self._stack.callback(loop.close)
        stall_limit_s = settings.kafka.max_poll_interval_ms / 1000
        self.liveness[f"consumer:{decl.group_id}"] = lambda: time.monotonic() - loop.last_poll_monotonic < stall_limit_s
        return loop

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=timezone.utc, daemon=True)
        for name, interval_s, job, at_start in self._periodic:
            # (next_run_time=None would add the job paused: leave it out for "after one interval")
            first = {"next_run_time": datetime.now(timezone.utc)} if at_start else {}
            scheduler.add_job(job, "interval", seconds=interval_s, id=name, max_instances=1, coalesce=True,
                              misfire_grace_time=None, **first)
        scheduler.start()
        self._scheduler = scheduler
        self._stack.callback(scheduler.shutdown, wait=True)

    def _serve_http(self) -> None:
        from fastapi import FastAPI

        http = self.settings.http
        own_metrics_port = http.metrics_port is not None
        app = self._http_app
        if app is None:
            app = FastAPI(title=f"rlhf-loop {self.name}", docs_url=None, redoc_url=None)
            app.include_router(ops_router(self.registry, self.liveness, self.readiness,
                                          serve_metrics=not own_metrics_port))
        for router in self._routers:
            app.include_router(router)
        graceful_s = self._http_graceful_s if self._http_graceful_s is not None else self.settings.consumer.shutdown_grace_s
        server = AppServer(app, http.host, http.port, log_level="warning", graceful_s=graceful_s,
                           name=f"{self.name}-http")
        self._stack.enter_context(server)
        self.liveness.setdefault("http", lambda: server.alive)
        self.http_port = self.metrics_port = server.port
        for listener in self._listeners:
            extra = FastAPI(title=f"rlhf-loop {self.name}", docs_url=None, redoc_url=None, openapi_url=None)
            for router in listener.routers:
                extra.include_router(router)
            served = AppServer(extra, listener.host, listener.port, log_level="warning", graceful_s=graceful_s,
                               name=f"{self.name}-http-{listener.port}")
            self._stack.enter_context(served)
            listener.port = served.port
        if own_metrics_port:
            metrics = AppServer(ops_app(self.registry, self.liveness, self.readiness), http.host,
                                int(http.metrics_port or 0), log_level="warning", graceful_s=1,
                                name=f"{self.name}-metrics")
            self._stack.enter_context(metrics)
            self.metrics_port = metrics.port

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("use the App as a context manager: `with App(...) as app:`")


__all__ = ["App", "Checks", "ConsumerDecl", "Listener"]
