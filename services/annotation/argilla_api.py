"""The few Argilla REST calls the SDK does not do well, and the one error policy.

The collector reads completed records with their responses through REST: the SDK
drops rank numbers (ties lost) and its response iterator crashes on null values.
Every call maps "Argilla is not there" (connection refused, timeout, 5xx) to
`DependencyUnavailable`, which the consumer loop answers with backoff and redelivery
and the collector with "try again next poll" — nothing is lost either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx
from argilla._exceptions import ArgillaAPIError

from shared.bus import DependencyUnavailable

T = TypeVar("T")


def unavailable_as_dependency(call: Callable[[], T], what: str) -> T:
    """Run an SDK or REST call; translate outages into DependencyUnavailable."""
    try:
        return call()
    except httpx.TransportError as error:
        raise DependencyUnavailable(f"Argilla unreachable during {what}: {error}") from error
    except ArgillaAPIError as error:
        if error.status_code >= 500:
            raise DependencyUnavailable(f"Argilla failed during {what}: {error}") from error
        raise
    except httpx.HTTPStatusError as error:
        if error.response.status_code >= 500:
            raise DependencyUnavailable(f"Argilla failed during {what}: {error}") from error
        raise


def naive_utc_iso(moment: datetime) -> str:
    """Argilla compares timestamps as naive UTC."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


class ArgillaRest:
    """A thin httpx client authenticated with one API key."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 15.0) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), headers={"X-Argilla-Api-Key": api_key},
                                  timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        def call() -> Any:
            response = self._http.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json() if response.content else None

        return unavailable_as_dependency(call, f"{method} {path}")

    def completed_since(self, dataset_id: str, cutoff: datetime, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Completed records updated at or after `cutoff`, oldest update first, with
        their responses and metadata."""
        body = {
            "filters": {"and": [
                {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["completed"]},
                {"type": "range", "scope": {"entity": "record", "property": "updated_at"},
                 "ge": naive_utc_iso(cutoff)},
            ]},
            "sort": [{"scope": {"entity": "record", "property": "updated_at"}, "order": "asc"}],
        }
        offset = 0
        while True:
            page = self._request("POST", f"/api/v1/datasets/{dataset_id}/records/search",
                                 params={"include": "responses", "offset": offset, "limit": page_size}, json=body)
            items = page.get("items") or []
            for item in items:
                yield item["record"]
            offset += len(items)
            if not items or offset >= int(page.get("total") or 0):
                return

    def upsert_records(self, dataset_id: str, records: list[dict[str, Any]]) -> None:
        """Create or update records by `external_id` (one request, what the SDK's
        `records.log` does underneath, without its progress bars)."""
        self._request("PUT", f"/api/v1/datasets/{dataset_id}/records/bulk", json={"items": records})

    def pending_count(self, dataset_id: str) -> int:
        """Records still waiting for enough submitted responses (Argilla's progress)."""
        progress = self._request("GET", f"/api/v1/datasets/{dataset_id}/progress")
        return int((progress or {}).get("pending") or 0)

    def record(self, record_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/v1/records/{record_id}", params={"include": "responses"}))
