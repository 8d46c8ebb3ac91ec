"""Capture throughput: HTTP -> Kafka through the capture service against raw
kafka-python producing the same events, same broker, same run.

The service runs as its own process (`rlhf-loop run capture`, as in production); the
load comes from this process through a minimal keep-alive HTTP/1.1 client on asyncio,
so the client's own cost stays small next to the server's. Rows:
  raw pipelined   - kafka-python send all + flush (the ceiling: no per-event wait)
  raw acked       - kafka-python, C threads each sending one event and waiting for its
                    ack (what "answer only after the ack" costs without HTTP)
  raw batch acked - kafka-python, C threads each sending B events and waiting for their
                    B acks before the next B: the batch endpoint's ack semantics
                    without HTTP
  http single     - POST /v1/outputs, C concurrent connections, 202 after the ack
  http batch      - POST /v1/outputs/batch, B events per request, C connections
Every row moves the same ~1.4 KB ModelOutput events (2 candidates). Beside the rates,
the CPU time each process (this one, the capture service, the broker) spent per event
in each row, from /proc: where the time goes when the ratio is short.

Run: .venv/bin/python -m bench.capture_throughput [--single 6000 --batch 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from services.capture.mapping import to_model_output
from services.capture.schema import OutputIn
from shared.embedded.broker import EmbeddedBroker
from shared.embedded.ports import free_port, wait_for_port
from shared.settings import KafkaSettings
from shared.topics import OUTPUTS

RESULTS = Path(__file__).parent / "results" / "capture_throughput.json"
TOKEN = "bench-token"


def make_payloads(n: int, prefix: str) -> list[dict[str, Any]]:
    filler = "lorem ipsum dolor sit amet " * 14
    model = {"name": "bench", "version": "v1"}
    return [{
        "client_request_id": f"{prefix}-{i}",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "candidates": [{"id": "a", "text": filler, "model": model}, {"id": "b", "text": filler[::-1], "model": model}],
    } for i in range(n)]


def raw_pipelined(kafka: KafkaSettings, payloads: list[dict[str, Any]]) -> float:
    producer = KafkaProducer(**kafka.producer_kwargs())
    started = time.perf_counter()
    for p in payloads:  # building and serialising the event is work any producer does
        event = to_model_output(OutputIn.model_validate(p))
        producer.send(OUTPUTS.name, key=event.partition_key.encode(), value=event.to_json_bytes())
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def raw_acked(kafka: KafkaSettings, payloads: list[dict[str, Any]], concurrency: int) -> float:
    producer = KafkaProducer(**kafka.producer_kwargs())
    shares = [payloads[i::concurrency] for i in range(concurrency)]

    def work(share: list[dict[str, Any]]) -> None:
        for p in share:
            event = to_model_output(OutputIn.model_validate(p))
            producer.send(OUTPUTS.name, key=event.partition_key.encode(), value=event.to_json_bytes()).get(30)

    threads = [threading.Thread(target=work, args=(s,)) for s in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def raw_batch_acked(kafka: KafkaSettings, payloads: list[dict[str, Any]], batch_size: int,
                    concurrency: int) -> float:
    producer = KafkaProducer(**kafka.producer_kwargs())
    batches = [payloads[i:i + batch_size] for i in range(0, len(payloads), batch_size)]
    shares = [batches[i::concurrency] for i in range(concurrency)]

    def work(share: list[list[dict[str, Any]]]) -> None:
        for batch in share:
            futures = []
            for p in batch:
                event = to_model_output(OutputIn.model_validate(p))
                futures.append(producer.send(OUTPUTS.name, key=event.partition_key.encode(),
                                             value=event.to_json_bytes()))
            for future in futures:
                future.get(30)

    threads = [threading.Thread(target=work, args=(s,)) for s in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


async def _connection(port: int, requests: list[bytes]) -> int:
    """One keep-alive connection sending its requests one after another; 202s seen."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    for request in requests:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        ok += head.startswith(b"HTTP/1.1 202")
    writer.close()
    return ok


def _request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def http_run(port: int, bodies: list[bytes], path: str, concurrency: int) -> tuple[float, int]:
    requests = [_request(path, b) for b in bodies]
    shares = [requests[i::concurrency] for i in range(concurrency)]

    async def go() -> int:
        return sum(await asyncio.gather(*(_connection(port, s) for s in shares)))

    started = time.perf_counter()
    ok = asyncio.run(go())
    return time.perf_counter() - started, ok


def start_service(broker: EmbeddedBroker, port: int, gc_freeze: bool = True) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env.update(RLHF_GC_FREEZE=str(gc_freeze).lower(), RLHF_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers, RLHF_HTTP__HOST="127.0.0.1",
               RLHF_HTTP__PORT=str(port), RLHF_CAPTURE__TOKEN=TOKEN, RLHF_LOG_LEVEL="WARNING")
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "capture"], env=env)
    if not wait_for_port("127.0.0.1", port, 30):
        process.kill()
        raise SystemExit("capture service did not start")
    return process


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pids: dict[str, int], run: Any) -> tuple[float, dict[str, float]]:
    """`run()`'s seconds (its return value) and each process's CPU seconds meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds = run()
    return seconds, {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}


def accepted_by_service(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rlhf_capture_events_accepted_total{"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=6000, help="events through POST /v1/outputs")
    parser.add_argument("--batch", type=int, default=30000, help="events through the batch endpoint")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16, help="connections for the single endpoint")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="run the service with RLHF_GC_FREEZE=false (what freezing its start-up heap buys)")
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        kafka = broker.kafka_settings()
        port = free_port()
        service = start_service(broker, port, gc_freeze=not args.no_gc_freeze)
        try:
            best: dict[str, float] = {}
            cpu: dict[str, dict[str, float]] = {}  # of the best round, per event
            counts = {"raw_pipelined": args.batch, "raw_acked": args.single, "raw_batch_acked": args.batch,
                      "http_single": args.single, "http_batch": args.batch}
            pids = {"bench": os.getpid(), "service": service.pid, "broker": broker.pid or 0}
            sent = 0
            for r in range(args.rounds):
                single = [json.dumps(p).encode() for p in make_payloads(args.single, f"s{r}")]
                items = make_payloads(args.batch, f"b{r}")
                batches = [json.dumps({"items": items[i:i + args.batch_size]}).encode()
                           for i in range(0, len(items), args.batch_size)]
                http_run(port, single[:200], "/v1/outputs", 4)  # warm-up: connections, metadata
                sent += 200
                oks: dict[str, int] = {}

                def http(name: str, bodies: list[bytes], path: str, concurrency: int) -> float:
                    seconds, oks[name] = http_run(port, bodies, path, concurrency)
                    return seconds

                raw_items, raw_singles = make_payloads(args.batch, f"rp{r}"), make_payloads(args.single, f"ra{r}")
                raw_batched = make_payloads(args.batch, f"rb{r}")
                phases = {
                    "http_single": lambda: http("single", single, "/v1/outputs", args.concurrency),
                    "http_batch": lambda: http("batch", batches, "/v1/outputs/batch", args.batch_concurrency),
                    "raw_pipelined": lambda: raw_pipelined(kafka, raw_items),
                    "raw_acked": lambda: raw_acked(kafka, raw_singles, args.concurrency),
                    "raw_batch_acked": lambda: raw_batch_acked(kafka, raw_batched, args.batch_size,
                                                               args.batch_concurrency),
                }
                for name, phase in phases.items():
                    seconds, spent = timed(pids, phase)
                    if seconds < best.get(name, float("inf")):
                        best[name] = seconds
                        cpu[name] = {k: round(v * 1e6 / counts[name], 1) for k, v in spent.items()}
                assert oks == {"single": len(single), "batch": len(batches)}, oks
                sent += len(single) + len(items)
            stored = accepted_by_service(port)
            assert stored == sent, f"service acknowledged {stored} events, bench sent {sent}"
        finally:
            service.terminate()
            service.wait(30)
    rates = {name: counts[name] / seconds for name, seconds in best.items()}
    size = len(to_model_output(OutputIn.model_validate(make_payloads(1, "size")[0])).to_json_bytes())
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "event_bytes": size,
        "service_gc_freeze": not args.no_gc_freeze,
        "events": counts,
        "concurrency": {"single": args.concurrency, "batch": args.batch_concurrency, "batch_size": args.batch_size},
        "events_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_to_raw_pipelined": {k: round(rates[k] / rates["raw_pipelined"], 3)
                                   for k in ("http_single", "http_batch", "raw_acked", "raw_batch_acked")},
        "ratio_single_to_raw_acked": round(rates["http_single"] / rates["raw_acked"], 3),
        "ratio_batch_to_raw_batch_acked": round(rates["http_batch"] / rates["raw_batch_acked"], 3),
        "cpu_us_per_event": cpu,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"capture throughput, events of {size} B, best of {args.rounds} (Tansu, lz4, acks=all)")
    print(f"{'path':<44}{'events/s':>10}{'vs raw pipelined':>18}")
    labels = {
        "raw_pipelined": "raw kafka-python, send all + flush",
        "raw_acked": f"raw kafka-python, {args.concurrency} threads, wait each ack",
        "raw_batch_acked": f"raw, {args.batch_concurrency} threads, x{args.batch_size} then wait acks",
        "http_single": f"POST /v1/outputs, {args.concurrency} connections",
        "http_batch": f"POST /v1/outputs/batch x{args.batch_size}, {args.batch_concurrency} conns",
    }
    for key, label in labels.items():
        print(f"{label:<44}{rates[key]:>10,.0f}{rates[key] / rates['raw_pipelined']:>18.2f}")
    print(f"http single vs raw acked at the same concurrency: {result['ratio_single_to_raw_acked']:.2f}")
    print(f"http batch vs raw batch acked (same batches, same connections/threads): "
          f"{result['ratio_batch_to_raw_batch_acked']:.2f}")
    print("CPU µs per event (best round): " + "; ".join(
        f"{labels[k].split(',')[0]}: " + ", ".join(f"{p} {v}" for p, v in cpu[k].items()) for k in labels))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
