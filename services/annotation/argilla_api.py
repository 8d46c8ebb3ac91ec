"""The few Argilla REST calls the SDK does not do well, and the one error policy.

The collector reads completed records with their responses through REST: the SDK
drops rank numbers (ties lost) and its response iterator crashes on null values.
Every call maps "Argilla is not there" (connection refused, timeout, 5xx) to
`DependencyUnavailable`, which the consumer loop answers with backoff and redelivery
and the collector with "try again next poll" — nothing is lost either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID

import httpx
from argilla._exceptions import ArgillaAPIError

from shared.bus import DependencyUnavailable

from .rankings import parse_time

T = TypeVar("T")

MAX_PAGE_SIZE = 1000  # the most records argilla-server 2.8 returns per search request


# Answers that say "not now", not "never": a rotated or revoked key (fixed by an
# operator), a timeout, a concurrent write to the same record, a rate limit.
TRANSIENT_STATUSES = frozenset({401, 403, 408, 409, 425, 429})


def is_transient(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUSES


def unavailable_as_dependency(call: Callable[[], T], what: str) -> T:
    """Run an SDK or REST call; translate outages and transient refusals (see
    TRANSIENT_STATUSES) into DependencyUnavailable."""
    try:
        return call()
    except httpx.TransportError as error:
        raise DependencyUnavailable(f"Argilla unreachable during {what}: {error}") from error
    except ArgillaAPIError as error:
        if is_transient(error.status_code):
            raise DependencyUnavailable(f"Argilla answered {error.status_code} during {what}: {error}") from error
        raise
    except httpx.HTTPStatusError as error:
        if is_transient(error.response.status_code):
            raise DependencyUnavailable(
                f"Argilla answered {error.response.status_code} during {what}: {error}") from error
        raise


def naive_utc_iso(moment: datetime) -> str:
    """Argilla compares timestamps as naive UTC."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


def _ascending(prop: str) -> dict[str, Any]:
    return {"scope": {"entity": "record", "property": prop}, "order": "asc"}


def _range(prop: str, *, ge: str, le: str | None = None) -> dict[str, Any]:
    bounds = {"ge": ge} if le is None else {"ge": ge, "le": le}
    return {"type": "range", "scope": {"entity": "record", "property": prop}, **bounds}


class ArgillaRest:
    """A thin httpx client authenticated with one API key."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 15.0) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), headers={"X-Argilla-Api-Key": api_key},
                                  timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, http_errors: bool = False, **kwargs: Any) -> Any:
        """`http_errors`: a 4xx reaches the caller as httpx.HTTPStatusError, for callers
        that classify Argilla's answers themselves (the pusher)."""
        def call() -> Any:
            response = self._http.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json() if response.content else None

        if http_errors:
            try:
                return call()
            except httpx.TransportError as error:
                raise DependencyUnavailable(f"Argilla unreachable during {method} {path}: {error}") from error
        return unavailable_as_dependency(call, f"{method} {path}")

    def completed_since(self, dataset_id: str, cutoff: datetime, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Completed records updated at or after `cutoff`, in (updated_at, id) order, with
        their responses and metadata.

        Keyset pagination: each page starts after the last record of the one before,
        never at an offset. A record updated while the walk is under way leaves its
        place (offset paging would then shift the rest and skip one) and comes again
        at its new one, further on; every record that stays put is returned once.
        So the newest update time returned is a safe watermark: nothing at or before
        it is left behind. The search API filters with inclusive ranges only, so "after
        (t, id)" is asked in two steps: the rest of time t with ids above id, then
        times from t + 1 µs (Argilla's timestamps are microseconds).
        """
        completed = {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["completed"]}
        by_time = [_ascending("updated_at"), _ascending("id")]
        since = naive_utc_iso(cutoff)
        while True:
            page = self._search(dataset_id, [completed, _range("updated_at", ge=since)], by_time, page_size)
            yield from page
            if len(page) < page_size:
                return
            last_at = parse_time(str(page[-1]["updated_at"]))
            last_id = str(page[-1]["id"])
            at = naive_utc_iso(last_at)
            # the rest of `last_at` (a bulk write gives many records one time); `ge` on
            # the id returns the last record itself too, hence one more than a page
            limit = min(page_size + 1, MAX_PAGE_SIZE)
            while True:
                same_time = [completed, _range("updated_at", ge=at, le=at), _range("id", ge=last_id)]
                found = self._search(dataset_id, same_time, [_ascending("id")], limit)
                rest = [r for r in found if str(r["id"]) != last_id]
                yield from rest
                if len(found) < limit:
                    break
                last_id = str(rest[-1]["id"])
            since = naive_utc_iso(last_at + timedelta(microseconds=1))

    def _search(self, dataset_id: str, filters: list[dict[str, Any]], sort: list[dict[str, Any]],
                limit: int) -> list[dict[str, Any]]:
        body = {"filters": {"and": filters}, "sort": sort}
        page = self._request("POST", f"/api/v1/datasets/{dataset_id}/records/search",
                             params={"include": "responses", "offset": 0, "limit": limit}, json=body)
        return [item["record"] for item in page.get("items") or []]

    def upsert_records(self, dataset_id: str, records: list[dict[str, Any]]) -> None:
        """Create or update records by `external_id` (one request, what the SDK's
        `records.log` does underneath, without its progress bars). Argilla's HTTP
        errors, 5xx included, reach the caller as they are (see pusher.classify)."""
        self._request("PUT", f"/api/v1/datasets/{dataset_id}/records/bulk", json={"items": records},
                      http_errors=True)

    def pending_count(self, dataset_id: str) -> int:
        """Records still waiting for enough submitted responses (Argilla's progress)."""
        progress = self._request("GET", f"/api/v1/datasets/{dataset_id}/progress")
        return int((progress or {}).get("pending") or 0)

    def last_activity(self, dataset_id: str) -> str:
        """The dataset's `last_activity_at`: Argilla moves it on every response created,
        edited or deleted (a record's own `updated_at` stays put when a response is
        edited), so an unchanged value means no ranking changed since it was read."""
        dataset = self._request("GET", f"/api/v1/datasets/{dataset_id}")
        return str((dataset or {}).get("last_activity_at") or (dataset or {}).get("updated_at"))

    def record(self, record_id: str) -> dict[str, Any] | None:
        """One record with its responses (and `dataset_id`), or None when Argilla has no
        such record or refuses it for good (any other 4xx: a hint naming it is dropped,
        not retried forever). Only a UUID is ever put in the path."""
        try:
            path = f"/api/v1/records/{UUID(str(record_id))}"
        except ValueError:
            return None
        try:
            found = self._request("GET", path, params={"include": "responses"}, http_errors=True)
        except httpx.HTTPStatusError as error:
            if is_transient(error.response.status_code):
                raise DependencyUnavailable(
                    f"Argilla answered {error.response.status_code} during GET {path}: {error}") from error
            return None
        return dict(found) if isinstance(found, dict) else None
