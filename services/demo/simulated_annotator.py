"""A simulated annotator: logs in like a person and ranks through the UI's own endpoints.

For demos, load tests and end-to-end tests of the loop without humans. It logs in with
username and password (`POST /api/v1/token`, what the login page does), asks for its
next pending record (`POST /api/v1/me/datasets/{id}/records/search`, what the
annotation page does) and submits a ranking (`POST /api/v1/records/{id}/responses`).

The ranking follows an oracle: a function scoring each answer from what a person sees
on the page, the prompt and the answer texts (higher is better), e.g. "the HH-RLHF
`chosen` text wins". `noise` adds Gaussian noise (in
units of the oracle's score) before ranking, candidates whose noisy scores are within
`tie_within` share a rank, and `delay_s` is a pause per record, like reading time.

Run: python -m services.demo.simulated_annotator --url URL --username U --password P
(the oracle there prefers longer answers, a deliberately naive stand-in).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from services.annotation.schema import PROMPT_FIELD, RANK_QUESTION, answer_field

log = logging.getLogger(__name__)

Oracle = Callable[[str, list[str]], list[float]]


def length_oracle(prompt: str, answers: list[str]) -> list[float]:
    return [float(len(answer)) for answer in answers]


def ranks_from_scores(scores: list[float], tie_within: float = 0.0) -> list[int]:
    """Competition ranks, best (highest score) = 1; scores within `tie_within` of the
    previous one in order share its rank (1, 1, 3 ...)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for position, index in enumerate(order):
        previous = order[position - 1] if position else None
        if previous is not None and scores[previous] - scores[index] <= tie_within:
            ranks[index] = ranks[previous]
        else:
            ranks[index] = position + 1
    return ranks


class SimulatedAnnotator:
    def __init__(self, url: str, username: str, password: str, oracle: Oracle = length_oracle, *,
                 noise: float = 0.0, tie_within: float = 0.0, delay_s: float = 0.0,
                 seed: int | None = None, timeout_s: float = 15.0) -> None:
        self.username = username
        self._oracle = oracle
        self._noise = noise
        self._tie_within = tie_within
        self._delay_s = delay_s
        self._random = random.Random(seed)
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)
        token = self._http.post("/api/v1/token", data={"username": username, "password": password})
        token.raise_for_status()
        self._http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SimulatedAnnotator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_pending(self, dataset_id: str) -> dict[str, Any] | None:
        """The next record this annotator has not answered and the dataset still needs."""
        body = {"filters": {"and": [
            {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
            {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
        ]}}
        page = self._http.post(f"/api/v1/me/datasets/{dataset_id}/records/search",
                               params={"include": "responses", "limit": 1}, json=body)
        page.raise_for_status()
        items = page.json()["items"]
        return items[0]["record"] if items else None

    def ranking_for(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        fields = record["fields"]
        slots = sorted((name for name in fields if name.startswith("answer_")), key=lambda n: int(n[7:]))
        scores = self._oracle(str(fields.get(PROMPT_FIELD, "")), [str(fields[name]) for name in slots])
        noisy = [score + self._random.gauss(0.0, self._noise) if self._noise else score for score in scores]
        ranks = ranks_from_scores(noisy, self._tie_within)
        return [{"value": answer_field(slot), "rank": rank} for slot, rank in enumerate(ranks, start=1)]

    def submit(self, record_id: str, ranking: list[dict[str, Any]], status: str = "submitted") -> None:
        values = {RANK_QUESTION: {"value": ranking}} if status != "discarded" else {}
        response = self._http.post(f"/api/v1/records/{record_id}/responses",
                                   json={"values": values, "status": status})
        response.raise_for_status()

    def annotate(self, dataset_id: str, limit: int | None = None) -> int:
        """Rank pending records until none is left (or `limit`); returns how many."""
        done = 0
        while limit is None or done < limit:
            record = self.next_pending(dataset_id)
            if record is None:
                break
            if self._delay_s:
                time.sleep(self._delay_s)
            self.submit(record["id"], self.ranking_for(record))
            done += 1
        return done


def main() -> None:  # pragma: no cover - a manual tool
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--dataset-id", required=True)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--delay-s", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with SimulatedAnnotator(args.url, args.username, args.password, noise=args.noise,
                            delay_s=args.delay_s) as annotator:
        while True:
            count = annotator.annotate(args.dataset_id)
            log.info("%s ranked %d records", annotator.username, count)
            time.sleep(5)


if __name__ == "__main__":  # pragma: no cover
    main()
