"""The `rlhf-loop` command.

  rlhf-loop broker            run the embedded broker (Tansu) in the foreground
  rlhf-loop topics            create and list the loop's topics on any bootstrap server
  rlhf-loop run SERVICE       run one service (what a Kubernetes Deployment calls)
  rlhf-loop up                embedded broker + every service, until Ctrl-C
  rlhf-loop services          list the services
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from kafka.errors import KafkaError

from shared.lifecycle import configure_logging, install_stop_signals
from shared.observability.probes import BrokerUnreachable

from .catalog import SERVICES, UnknownService, load

log = logging.getLogger("rlhf-loop")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-loop", description="Continuous RLHF from production traffic.")
    parser.add_argument("--log-level", default=os.environ.get("RLHF_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    broker = commands.add_parser("broker", help="run the embedded Tansu broker in the foreground")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=9092)

    topics = commands.add_parser("topics", help="create (if missing) and list the loop's topics")
    topics.add_argument("--bootstrap-servers", help="default: RLHF_KAFKA__BOOTSTRAP_SERVERS or 127.0.0.1:9092")
    topics.add_argument("--list-only", action="store_true", help="only list, create nothing")

    run = commands.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", help=f"one of: {', '.join(sorted(SERVICES))}")

    up = commands.add_parser("up", help="embedded broker and every service, until Ctrl-C")
    up.add_argument("--data-dir", default=os.environ.get("RLHF_DATA_DIR", "./.rlhf-loop"))
    up.add_argument("--broker-port", type=int, default=0, help="0 picks a free port")
    up.add_argument("--http-port-base", type=int, default=9100,
                    help="service i serves /metrics on this port + i")
    up.add_argument("--grace-seconds", type=float, default=10.0)
    up.add_argument("--only", nargs="*", help="start only these services")

    commands.add_parser("services", help="list the services")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return COMMANDS[args.command](args)
    except UnknownService as error:
        log.error("%s", error)
        return 2
    except BrokerUnreachable as error:
        log.error("%s", error)
        return 3


def cmd_broker(args: argparse.Namespace) -> int:
    from shared.embedded.broker import EmbeddedBroker

    stop = threading.Event()
    install_stop_signals(stop)
    with EmbeddedBroker(host=args.host, port=args.port) as broker:
        print(f"broker ready: RLHF_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                log.error("the broker exited unexpectedly")
                return 1
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from shared.bus.admin import ensure_topics, list_topics
    from shared.observability.probes import wait_until_reachable
    from shared.settings import ServiceSettings
    from shared.topics import LOOP_TOPICS

    kafka = ServiceSettings().kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    wait_until_reachable(kafka)
    try:
        if not args.list_only:
            created = ensure_topics(kafka, [(t.name, t.partitions) for t in LOOP_TOPICS])
            for name in created:
                print(f"created {name}")
        for name in list_topics(kafka):
            print(name)
    except KafkaError as error:
        log.error("topic administration failed on %s: %r", kafka.bootstrap_servers, error)
        return 3
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .launch import run_until_signalled

    return run_until_signalled(load(args.service))


def cmd_up(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    names = args.only or sorted(SERVICES)
    for name in names:
        if name not in SERVICES:
            raise UnknownService(name)
    stop = threading.Event()
    install_stop_signals(stop)
    supervisor = Supervisor(
        names,
        data_dir=Path(args.data_dir).resolve(),
        http_port_base=args.http_port_base,
        broker_port=args.broker_port,
        grace_s=args.grace_seconds,
    )

    def announce(sup: Supervisor) -> None:
        print(f"rlhf-loop is up. Broker: RLHF_KAFKA__BOOTSTRAP_SERVERS={sup.bootstrap_servers}", flush=True)
        for child in sup.children:
            print(f"  {child.name:<16} http://127.0.0.1:{child.port}/metrics  log: {child.log_path}", flush=True)
        print("Ctrl-C stops everything.", flush=True)

    supervisor.run(stop, on_ready=announce)
    print("rlhf-loop stopped.", flush=True)
    return 0


def cmd_services(_args: argparse.Namespace) -> int:
    for name in sorted(SERVICES):
        print(name)
    return 0


COMMANDS = {
    "broker": cmd_broker,
    "topics": cmd_topics,
    "run": cmd_run,
    "up": cmd_up,
    "services": cmd_services,
}

if __name__ == "__main__":
    sys.exit(main())
