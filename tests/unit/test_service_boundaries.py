"""Services that serve models read the registry through shared/ (registry_reader,
models/), never through the trainer's package: they are deployed without it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"


def imported_modules(package: Path) -> set[str]:
    names: set[str] = set()
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("service", ["policy_server", "vllm_deployer"])
def test_serving_services_do_not_import_the_trainer(service: str) -> None:
    imported = imported_modules(SERVICES / service)
    assert imported, "no imports found: wrong path?"
    assert not {m for m in imported if m == "services.trainer" or m.startswith("services.trainer.")}
