"""Where the embedded Argilla's UI is, for what runs beside the annotation service on
the same data dir (`rlhf-loop up`, the demo's simulated annotators): the one module
that knows the files the annotation service leaves under DATA_DIR/argilla."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ENDPOINT_FILE = "endpoint.json"  # the UI's URL (no secrets), there while the service runs
CREDENTIALS_FILE = "credentials.json"  # every login, written by shared.embedded.argilla (0600)


def argilla_dir(data_dir: str | Path) -> Path:
    """The embedded Argilla's data dir under the loop's DATA_DIR."""
    return Path(data_dir) / "argilla"


@dataclass(frozen=True)
class Login:
    username: str
    password: str


@dataclass(frozen=True)
class EmbeddedUi:
    url: str
    annotators: tuple[Login, ...]
    credentials_file: Path  # where a person finds the passwords
    comparison_dataset: str | None = None  # the blind A/B dataset's name, judged first by the demo


def publish_endpoint(directory: Path, url: str, comparison_dataset: str | None = None) -> Path:
    """Tell `embedded_ui` readers where the UI is (and which dataset holds the canary
    comparisons); returns the file (removed at stop)."""
    path = directory / ENDPOINT_FILE
    endpoint: dict[str, str] = {"url": url}
    if comparison_dataset:
        endpoint["comparison_dataset"] = comparison_dataset
    path.write_text(json.dumps(endpoint))
    return path


def embedded_ui(directory: Path) -> EmbeddedUi | None:
    """The running embedded Argilla's URL and annotator logins; None while the
    annotation service has not started it (or it was stopped)."""
    endpoint, credentials = directory / ENDPOINT_FILE, directory / CREDENTIALS_FILE
    if not endpoint.exists() or not credentials.exists():
        return None
    users = json.loads(credentials.read_text())
    annotators = tuple(Login(u["username"], u["password"]) for u in users if u["role"] == "annotator")
    published = json.loads(endpoint.read_text())
    return EmbeddedUi(published["url"], annotators, credentials, published.get("comparison_dataset"))
