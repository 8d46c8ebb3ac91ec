"""Run argilla-server with the SQL search engine registered (argilla-server venv only).

Usage: python serve.py HOST PORT. Configuration comes from ARGILLA_* variables set by
`shared.embedded.argilla`. The engine must be registered before the app starts: the
app's lifespan pings the configured engine by name.
"""

import sys

import sql_search
from parent_watch import watch_parent


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    sql_search.register()
    watch_parent()
    import uvicorn

    from argilla_server import app

    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
