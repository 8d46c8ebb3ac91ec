"""The argilla-server venv: created on first use, reused while its requirements hold.

argilla-server 2.8.0 pins pydantic~=2.9, typer<0.10, httpx~=0.27 and psutil<5.10, which
clash with the project's own venv, so the embedded server runs from a venv of its own.
`click<8.2` is not optional: with click 8.2 every `python -m argilla_server ...`
command crashes. The venv is built with the same Python as the caller (3.11) and a
stamp file records what was installed; a lock file makes concurrent first uses
(two test sessions, `up` and a test) build it once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_REQUIREMENTS: tuple[str, ...] = ("argilla-server==2.8.0", "click<8.2")
DEFAULT_VENV_DIR = Path(__file__).resolve().parents[2] / ".venv-argilla"
VENV_DIR_ENV = "RLHF_ARGILLA_VENV"  # read by callers' settings, named here for the docs
_STAMP = ".rlhf-requirements"


class ServerVenvError(RuntimeError):
    pass


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _wanted_stamp(requirements: tuple[str, ...]) -> str:
    return "\n".join((f"python {sys.version_info.major}.{sys.version_info.minor}", *requirements)) + "\n"


def is_ready(venv_dir: Path, requirements: tuple[str, ...] = SERVER_REQUIREMENTS) -> bool:
    stamp = venv_dir / _STAMP
    return venv_python(venv_dir).exists() and stamp.exists() and stamp.read_text() == _wanted_stamp(requirements)


def ensure_server_venv(venv_dir: Path | None = None,
                       requirements: tuple[str, ...] = SERVER_REQUIREMENTS,
                       timeout_s: float = 900.0) -> Path:
    """Return the venv's python, building the venv first if it is missing or stale.
    pip reads the usual PIP_* variables (index, cache, proxy) from the environment."""
    venv_dir = (venv_dir or DEFAULT_VENV_DIR).resolve()
    if is_ready(venv_dir, requirements):
        return venv_python(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(venv_dir.parent / f".{venv_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(venv_dir, requirements):  # another process built it meanwhile
            return venv_python(venv_dir)
        started = time.monotonic()
        log.warning("creating the argilla-server venv at %s (first use; about a minute)", venv_dir)
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        commands = [
            [sys.executable, "-m", "venv", str(venv_dir)],
            [str(venv_python(venv_dir)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *requirements],
        ]
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
            if result.returncode != 0:
                raise ServerVenvError(
                    f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-4000:]}"
                )
        (venv_dir / _STAMP).write_text(_wanted_stamp(requirements))
        log.warning("argilla-server venv ready in %.0f s", time.monotonic() - started)
    return venv_python(venv_dir)


if __name__ == "__main__":  # `python -m shared.embedded.argilla_venv [DIR]`: a Makefile prerequisite
    logging.basicConfig(level=logging.INFO)
    print(ensure_server_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
