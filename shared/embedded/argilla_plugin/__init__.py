"""Code that runs INSIDE the argilla-server venv, never imported by the project's venv.

argilla-server 2.8.0 pins pydantic~=2.9 and friends, so it lives in a venv of its own
(`shared.embedded.argilla_venv`). `shared.embedded.argilla` starts the scripts in this
folder with that venv's interpreter, by path; they import their siblings by plain
module name (a script's own folder is on `sys.path`).

- `sql_search.py` — the search engine registered as `sql` (replaces Elasticsearch);
- `provision.py`  — migrations, WAL mode, workspace and users (idempotent);
- `serve.py`      — registers the engine, then runs the server app under uvicorn;
- `worker.py`     — registers the engine, then runs an rq worker (webhooks, jobs);
- `parent_watch.py` — both launchers stop themselves when their parent is gone.
"""

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
