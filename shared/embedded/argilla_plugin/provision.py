"""Prepare an embedded Argilla database (argilla-server venv only). Idempotent.

Usage: python provision.py SPEC.json, where SPEC is
{"workspace": "rlhf", "users": [{"username", "password", "api_key", "role"}, ...]}.

1. migrate the schema to head (what `python -m argilla_server database migrate` does);
2. switch SQLite to WAL, so the server's readers never wait on the worker's writes;
3. create the workspace and each user with the given password and API key, or bring
   an existing user back to them, and make every user a member of the workspace.

Done in one interpreter because each `python -m argilla_server ...` call pays the
server's import time (seconds on a small machine).
"""

import asyncio
import json
import sys

from sqlalchemy import text


def migrate() -> None:
    from argilla_server.cli.database.migrate import migrate_db

    migrate_db(revision="head")


def enable_wal() -> None:
    from argilla_server.database import sync_engine

    with sync_engine.connect() as connection:
        connection.execute(text("PRAGMA journal_mode=WAL"))


async def provision_users(spec: dict) -> None:
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User, Workspace, WorkspaceUser

    async with AsyncSessionLocal() as db:
        workspace = await Workspace.get_by(db, name=spec["workspace"])
        if workspace is None:
            workspace = await Workspace.create(db, name=spec["workspace"])
        for wanted in spec["users"]:
            user = await accounts.get_user_by_username(db, wanted["username"])
            if user is None:
                user = await User.create(
                    db,
                    first_name=wanted["username"],
                    username=wanted["username"],
                    role=wanted["role"],
                    password_hash=accounts.hash_password(wanted["password"]),
                    api_key=wanted["api_key"],
                )
            elif user.api_key != wanted["api_key"] or not accounts.verify_password(
                wanted["password"], user.password_hash
            ):
                await user.update(
                    db,
                    api_key=wanted["api_key"],
                    password_hash=accounts.hash_password(wanted["password"]),
                    role=wanted["role"],
                )
            if await WorkspaceUser.get_by(db, workspace_id=workspace.id, user_id=user.id) is None:
                await WorkspaceUser.create(db, workspace_id=workspace.id, user_id=user.id)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    migrate()
    enable_wal()
    asyncio.run(provision_users(spec))
    print("provisioned", flush=True)


if __name__ == "__main__":
    main()
