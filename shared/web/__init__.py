"""The one HTTP stack of every service: FastAPI apps served by uvicorn on a thread
(server.py), with the same /metrics /healthz /readyz routes everywhere (ops.py)."""

from .ops import Checks, ops_app, ops_router, run_checks
from .server import AppServer

__all__ = ["AppServer", "Checks", "ops_app", "ops_router", "run_checks"]
