""""Committed offset => durably stored": what each store does before a consumer may
commit, checked on the real files (fsync is observed, not replaced)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.sampler.store import SamplerStore
from services.trainer.registry import ModelRegistry
from services.trainer.store import PreferenceStore


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync was called on (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_publishing_a_version_fsyncs_its_files_subdirectories_and_the_renamed_entry(
        tmp_path: Path, fsynced: list[str]) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    staged = registry.staging("run-1", "policy")
    (staged / "value").mkdir()
    (staged / "value" / "head.pt").write_bytes(b"w")
    (staged / "adapter_config.json").write_text("{}")
    version = registry.publish("policy", staged, {})
    root = registry.root.resolve()
    assert str(staged.resolve() / "value") in fsynced  # a subdirectory's entries
    assert str(staged.resolve() / "value" / "head.pt") in fsynced
    assert fsynced.count(str(root / "policy")) >= 2  # the rename, then latest.json's replace
    fsynced.clear()
    registry.set_pointer("policy", "promoted", version)
    assert fsynced[-1] == str(root / "policy")  # the pointer's replace is durable


@pytest.mark.parametrize("open_store", [lambda p: PreferenceStore(p / "trainer.sqlite"),
                                        lambda p: SamplerStore(p / "sampler.sqlite")])
def test_stores_whose_writes_precede_an_offset_commit_sync_every_commit(tmp_path: Path, open_store) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    connection = getattr(store, "_conn", None) or store._db
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: NORMAL can lose a WAL commit
    store.close()
