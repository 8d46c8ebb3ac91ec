"""Stop this process when the process that started it is gone.

The embedded parts run in sessions of their own (so Ctrl-C reaches the supervisor
first), which also means they would outlive a supervisor killed with SIGKILL. The
launchers call `watch_parent()`: once the parent pid changes, they terminate
themselves the graceful way (SIGTERM to self).
"""

import os
import signal
import threading
import time


def watch_parent(interval_s: float = 1.0) -> None:
    expected = os.environ.get("RLHF_PARENT_PID")
    if not expected:
        return

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != int(expected):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
