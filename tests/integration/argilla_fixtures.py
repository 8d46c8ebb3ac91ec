"""The embedded Argilla for integration tests: one real server for the whole session.

Imported by the Argilla test module (not a conftest, so sessions that never touch
Argilla never pay for it). The first use creates `.venv-argilla` (about 30-60 s with a
warm pip cache); later sessions reuse it, and the server starts in 5-15 s. Each test
uses its own dataset name, so tests never see each other's records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import argilla as rg
import pytest

from shared.embedded.argilla import EmbeddedArgilla


@pytest.fixture(scope="session")
def argilla(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedArgilla]:
    data_dir = Path(tmp_path_factory.mktemp("argilla"))
    with EmbeddedArgilla(data_dir, annotators=("annotator-1", "annotator-2", "annotator-3")) as running:
        yield running


@pytest.fixture
def argilla_client(argilla: EmbeddedArgilla) -> rg.Argilla:
    return rg.Argilla(api_url=argilla.url, api_key=argilla.api_key)


@pytest.fixture
def dataset_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
