"""Column types shared by the models."""

from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import JSON, DateTime, Table
from sqlalchemy.types import TypeDecorator


def table_of(model: Any) -> Table:
    """The Table behind a mapped class, typed as one (``__table__`` is declared as any FromClause)."""
    return cast(Table, model.__table__)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite hands back naive values, PostgreSQL aware ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONRecord(Protocol):
    """A value that turns into a JSON object and back (a dataclass with to_json / from_json)."""

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any: ...


class JSONDataclass(TypeDecorator):
    """A JSON column whose Python value is a typed record: every reader and writer names its fields, and nothing
    is ever pickled. Assign a new record (``dataclasses.replace``) to change it, so that the change is seen."""

    impl = JSON
    cache_ok = True

    def __init__(self, record: type[JSONRecord]):
        super().__init__()
        self.record = record

    def process_bind_param(self, value, dialect):
        return None if value is None else value.to_json()

    def process_result_value(self, value, dialect):
        return None if value is None else self.record.from_json(value)
