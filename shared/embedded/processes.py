"""Stopping child processes the same way everywhere: SIGTERM, a grace period, SIGKILL."""

from __future__ import annotations

import subprocess


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Ask `process` to stop, and make sure it has after `timeout_s`. Idempotent."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
