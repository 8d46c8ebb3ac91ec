"""`rlhf-loop` as a subprocess, the way a person runs it: a clean environment (no RLHF_*
of the caller's shell), the banner read up to "Ctrl-C", an orderly stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CLI = [sys.executable, "-m", "services.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without RLHF_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def start_up(args: list[str], **env: str) -> tuple[subprocess.Popen[str], str]:
    """`rlhf-loop up ARGS` until its banner is printed; returns the process and the
    banner (which names the broker: see `bootstrap_of`)."""
    process = subprocess.Popen([*CLI, "up", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=cli_env(**env))
    assert process.stdout is not None
    banner = ""
    while "Ctrl-C" not in banner:
        line = process.stdout.readline()
        assert line, banner  # exited before it was up: the output says why
        banner += line
    return process, banner


def bootstrap_of(banner: str) -> str:
    return banner.split("RLHF_KAFKA__BOOTSTRAP_SERVERS=", 1)[1].split()[0]


def stop_up(process: subprocess.Popen[str], timeout_s: float = 90) -> str:
    """Ctrl-C, then what it printed; killed if it does not stop in time."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]
