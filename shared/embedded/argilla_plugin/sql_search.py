"""A search engine for argilla-server 2.8.0 that answers from Argilla's own SQL tables.

Runs INSIDE the argilla-server venv (imported by `serve.py` and `worker.py`, never by
the project's own venv). Argilla ships Elasticsearch and OpenSearch engines only;
both are heavy services we cannot embed. Every fact a search needs (records, their
status, metadata, responses, suggestions) already lives in the relational database,
so this engine queries it there and every index hook is a no-op: there is no second
copy to keep in sync, and nothing to reindex after a crash.

Semantics follow the Elasticsearch engine of the same release: filters are ANDed,
"pending" for a user means "no response from this user", a text query matches all
words (AND) case-insensitively in the record's fields, `user_id` without an explicit
sort gives every annotator a stable order of their own, and progress counts come
from record and response statuses. Vector similarity search is not supported.

Written for SQLite (the embedded database): JSON is read with json_extract/json_each.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Iterable, List, Optional, Union
from uuid import UUID

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.sql.functions import Function

from argilla_server.database import AsyncSessionLocal
from argilla_server.enums import MetadataPropertyType, ResponseStatusFilter, SimilarityOrder
from argilla_server.models import (
    Dataset,
    MetadataProperty,
    Question,
    Record,
    Response,
    Suggestion,
    User,
    VectorSettings,
)
from argilla_server.search_engine import (
    AndFilter,
    Filter,
    FilterScope,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

ENGINE_NAME = "sql"
_RECORD_COLUMNS = {
    "id": Record.id,
    "external_id": Record.external_id,
    "inserted_at": Record.inserted_at,
    "updated_at": Record.updated_at,
    "status": Record.status,
}
_TIME_PROPERTIES = {"inserted_at", "updated_at"}


def _json_path(*keys: str) -> str:
    """A SQLite JSON path with every key quoted, so names with dots or dashes work."""
    return "$" + "".join('."' + key.replace('"', '\\"') + '"' for key in keys)


def _any_value(json_column: Any, path: str, values: List[str]) -> ColumnElement[bool]:
    """True if the JSON value at `path` is, or (for a list) contains, one of `values`.
    json_each over a scalar yields the scalar itself, so one form covers both; items
    that are objects (ranking answers: {"value": ..., "rank": ...}) match on "value"."""
    each = func.json_each(json_column, path).table_valued("value", "type")
    matches = or_(
        and_(each.c.type != "object", each.c.value.in_(values)),
        and_(each.c.type == "object", func.json_extract(each.c.value, "$.value").in_(values)),
    )
    return exists(select(each.c.value).where(matches).correlate_except(each))


def _range(expression: Any, ge: Any, le: Any) -> ColumnElement[bool]:
    clauses = []
    if ge is not None:
        clauses.append(expression >= ge)
    if le is not None:
        clauses.append(expression <= le)
    return and_(true(), *clauses)


def _as_datetime(value: Union[float, str, None]) -> Optional[datetime]:
    """Range bounds on record timestamps: ISO strings (naive = UTC) or epoch millis,
    as Elasticsearch reads them. Argilla stores naive UTC."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _as_uuid(value: Union[float, str, None]) -> Optional[UUID]:
    return None if value is None else UUID(str(value))


def _number(value: Union[float, str, None]) -> Optional[float]:
    return None if value is None else float(value)


class SQLSearchEngine(SearchEngine):
    """Stateless: one instance per request (as `get_search_engine` expects), each
    query on its own short session."""

    @classmethod
    async def new_instance(cls) -> "SQLSearchEngine":
        return cls()

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        async with AsyncSessionLocal() as db:
            return (await db.execute(select(1))).scalar_one() == 1

    async def info(self) -> dict:
        return {"distribution": "sql", "version": "1", "backend": "argilla relational database"}

    # Index maintenance: the database is the index, so there is nothing to maintain.
    async def create_index(self, dataset: Dataset) -> None:
        return None

    async def delete_index(self, dataset: Dataset) -> None:
        return None

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        return None

    async def configure_index_vectors(self, vector_settings: VectorSettings) -> None:
        return None

    async def index_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        return None

    async def partial_record_update(self, record: Record, **update: Any) -> None:
        return None

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        return None

    async def update_record_response(self, response: Response) -> None:
        return None

    async def delete_record_response(self, response: Response) -> None:
        return None

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    # Progress and metrics.
    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        query = select(Record.status, func.count()).where(Record.dataset_id == dataset.id).group_by(Record.status)
        async with AsyncSessionLocal() as db:
            counts = {str(status.value if hasattr(status, "value") else status): n
                      for status, n in (await db.execute(query)).all()}
        return {"total": sum(counts.values()), **counts}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        query = (
            select(Response.status, func.count())
            .join(Record, Record.id == Response.record_id)
            .where(Record.dataset_id == dataset.id, Response.user_id == user.id)
            .group_by(Response.status)
        )
        async with AsyncSessionLocal() as db:
            counts = {str(status.value if hasattr(status, "value") else status): n
                      for status, n in (await db.execute(query)).all()}
        return {"total": sum(counts.values()), **counts}

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        path = _json_path(metadata_property.name)
        in_dataset = Record.dataset_id == metadata_property.dataset_id
        async with AsyncSessionLocal() as db:
            if metadata_property.type == MetadataPropertyType.terms:
                each = func.json_each(Record.metadata_, path).table_valued("value")
                query = (
                    select(each.c.value, func.count())
                    .select_from(Record)
                    .join(each, true())
                    .where(in_dataset)
                    .group_by(each.c.value)
                    .order_by(func.count().desc(), each.c.value)
                )
                rows = (await db.execute(query)).all()
                return TermsMetrics(
                    total=sum(n for _, n in rows),
                    values=[TermsMetrics.TermCount(term=str(term), count=n) for term, n in rows],
                )
            value = func.json_extract(Record.metadata_, path)
            query = select(func.min(value), func.max(value)).where(in_dataset, value.is_not(None))
            low, high = (await db.execute(query)).one()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(
                min=None if low is None else int(low), max=None if high is None else int(high)
            )
        return FloatMetadataMetrics(
            min=None if low is None else float(low), max=None if high is None else float(high)
        )

    # Search.
    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[Union[UUID, str]] = None,
    ) -> SearchResponses:
        where = and_(Record.dataset_id == dataset.id, self._text_clause(query), self._filter_clause(filter))
        base = select(Record.id).where(where)
        async with AsyncSessionLocal() as db:
            total = (await db.execute(select(func.count()).select_from(base.subquery()))).scalar_one()
            if sort:
                ordered = base.order_by(*self._order_by(sort), Record.inserted_at, Record.id)
                ids = list((await db.execute(ordered.offset(offset).limit(limit))).scalars())
            elif user_id:
                # Elasticsearch seeds a random score with the user id: each annotator
                # sees the queue in an order of their own, stable across requests, so
                # annotators sharing a dataset do not all start on the same record.
                every = list((await db.execute(base)).scalars())
                every.sort(key=lambda rid: hashlib.sha1(f"{user_id}:{rid}".encode()).digest())
                ids = every[offset: offset + limit]
            else:
                ordered = base.order_by(Record.inserted_at, Record.id)
                ids = list((await db.execute(ordered.offset(offset).limit(limit))).scalars())
        return SearchResponses(items=[SearchResponseItem(record_id=rid, score=1.0) for rid in ids], total=total)

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        raise NotImplementedError("the embedded SQL search engine has no vector similarity search")

    # Query building.
    @staticmethod
    def _text_clause(query: Optional[Union[TextQuery, str]]) -> ColumnElement[bool]:
        if query is None:
            return true()
        text = TextQuery(q=query) if isinstance(query, str) else query
        words = [w.lower() for w in text.q.replace('"', " ").split() if w not in {"AND", "OR", "+", "|"}]
        if not words:
            return true()
        path = _json_path(text.field) if text.field else "$"
        # json_tree walks nested values too (chat fields are lists of messages).
        tree = func.json_tree(Record.fields, path).table_valued("value", "type")
        clauses = []
        for word in words:
            pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(exists(
                select(tree.c.value)
                .where(tree.c.type == "text", func.lower(tree.c.value).like(pattern, escape="\\"))
                .correlate_except(tree)
            ))
        return and_(*clauses)

    def _filter_clause(self, filter: Optional[Filter]) -> ColumnElement[bool]:
        if filter is None:
            return true()
        if isinstance(filter, AndFilter):
            return and_(true(), *(self._filter_clause(f) for f in filter.filters))
        scope = filter.scope
        if isinstance(scope, RecordFilterScope):
            return self._record_filter(filter, scope)
        if isinstance(scope, MetadataFilterScope):
            path = _json_path(scope.metadata_property)
            if isinstance(filter, TermsFilter):
                return _any_value(Record.metadata_, path, filter.values)
            return _range(func.json_extract(Record.metadata_, path), _number(filter.ge), _number(filter.le))
        if isinstance(scope, SuggestionFilterScope):
            return self._suggestion_filter(filter, scope)
        if isinstance(scope, ResponseFilterScope):
            return self._response_filter(filter, scope)
        raise ValueError(f"cannot filter on scope {scope!r}")

    @staticmethod
    def _record_filter(filter: Filter, scope: RecordFilterScope) -> ColumnElement[bool]:
        column = _RECORD_COLUMNS.get(str(scope.property))
        if column is None:
            raise ValueError(f"cannot filter on record property {scope.property!r}")
        if isinstance(filter, TermsFilter):
            if scope.property == "id":
                return column.in_([UUID(v) for v in filter.values])
            return column.in_(filter.values)
        if scope.property in _TIME_PROPERTIES:
            return _range(column, _as_datetime(filter.ge), _as_datetime(filter.le))
        if scope.property == "id":
            # Keyset pagination pages by (updated_at, id). Elasticsearch compares ids as
            # keyword strings; the UUID column compares the same way (hex, fixed layout).
            return _range(column, _as_uuid(filter.ge), _as_uuid(filter.le))
        return _range(column, filter.ge, filter.le)

    @staticmethod
    def _suggestion_filter(filter: Filter, scope: SuggestionFilterScope) -> ColumnElement[bool]:
        prop = str(scope.property or "value")
        of_question = and_(
            Suggestion.record_id == Record.id,
            Suggestion.question_id == Question.id,
            Question.name == scope.question,
        )
        if prop in ("value", "score"):
            column = Suggestion.value if prop == "value" else Suggestion.score
            if isinstance(filter, TermsFilter):
                matches = _any_value(column, "$", filter.values)
            else:
                matches = _range(func.json_extract(column, "$"), _number(filter.ge), _number(filter.le))
        elif prop in ("agent", "type"):
            column = Suggestion.agent if prop == "agent" else Suggestion.type
            matches = column.in_(filter.values) if isinstance(filter, TermsFilter) else false()
        else:
            raise ValueError(f"cannot filter on suggestion property {prop!r}")
        return exists(select(Suggestion.id).where(of_question, matches).correlate(Record))

    @staticmethod
    def _response_filter(filter: Filter, scope: ResponseFilterScope) -> ColumnElement[bool]:
        by_user = Response.user_id == scope.user.id if scope.user is not None else true()
        of_record = and_(Response.record_id == Record.id, by_user)
        if scope.question:
            path = _json_path(scope.question, "value")
            if isinstance(filter, TermsFilter):
                matches = _any_value(Response.values, path, filter.values)
            else:
                matches = _range(func.json_extract(Response.values, path), _number(filter.ge), _number(filter.le))
            return exists(select(Response.id).where(of_record, matches).correlate(Record))
        if scope.property != "status" or not isinstance(filter, TermsFilter):
            raise ValueError(f"cannot filter on response scope {scope!r}")
        wanted = [str(v) for v in filter.values]
        clauses: list[ColumnElement[bool]] = []
        if ResponseStatusFilter.pending in wanted:
            # Pending for a user = this user has not responded (draft counts as a response).
            clauses.append(not_(exists(select(Response.id).where(of_record).correlate(Record))))
        statuses = [v for v in wanted if v != ResponseStatusFilter.pending]
        if statuses:
            clauses.append(exists(
                select(Response.id).where(of_record, Response.status.in_(statuses)).correlate(Record)
            ))
        return or_(false(), *clauses)

    def _order_by(self, sort: List[Order]) -> list[Any]:
        return [self._sort_key(order.scope).asc() if str(order.order) == "asc"
                else self._sort_key(order.scope).desc() for order in sort]

    @staticmethod
    def _sort_key(scope: FilterScope) -> Any:
        if isinstance(scope, RecordFilterScope):
            column = _RECORD_COLUMNS.get(str(scope.property))
            if column is None:
                raise ValueError(f"cannot sort by record property {scope.property!r}")
            return column
        if isinstance(scope, MetadataFilterScope):
            return func.json_extract(Record.metadata_, _json_path(scope.metadata_property))
        if isinstance(scope, SuggestionFilterScope):
            prop = str(scope.property or "value")
            column: Function[Any] | Any = (
                func.json_extract(Suggestion.value if prop == "value" else Suggestion.score, "$")
                if prop in ("value", "score") else getattr(Suggestion, prop)
            )
            return (
                select(column)
                .where(Suggestion.record_id == Record.id, Suggestion.question_id == Question.id,
                       Question.name == scope.question)
                .correlate(Record).limit(1).scalar_subquery()
            )
        if isinstance(scope, ResponseFilterScope):
            by_user = Response.user_id == scope.user.id if scope.user is not None else true()
            value = (func.json_extract(Response.values, _json_path(scope.question, "value"))
                     if scope.question else Response.status)
            aggregate = func.avg(value) if scope.question else func.min(value)
            return (
                select(aggregate).where(Response.record_id == Record.id, by_user)
                .correlate(Record).scalar_subquery()
            )
        raise ValueError(f"cannot sort by scope {scope!r}")


def register() -> None:
    """Make `ARGILLA_SEARCH_ENGINE=sql` resolve to this engine (idempotent)."""
    SearchEngine.register(ENGINE_NAME)(SQLSearchEngine)
