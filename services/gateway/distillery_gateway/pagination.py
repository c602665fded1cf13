"""One pagination style for every list endpoint: a cursor.

A client asks for `limit` items, then for the next page with `after` set to the `last_id` of the one
before, until `has_more` is false (OpenAI's list shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

from pydantic import BaseModel, Field


class ListQuery(BaseModel):
    """The query of a list endpoint whose items have string ids, newest first."""

    limit: int = Field(default=20, ge=1, le=100, description="Items on this page.")
    after: str | None = Field(default=None, max_length=32, description="`last_id` of the previous page.")


class CursorPage(BaseModel):
    """A page of a list; subclasses say what `data`, `first_id` and `last_id` hold."""

    object: Literal["list"] = "list"
    data: Sequence[Any]
    has_more: bool
    first_id: Any = None
    last_id: Any = Field(default=None, description="The cursor of the next page (its `after`).")

    @classmethod
    def of(cls, data: Sequence[Any], has_more: bool) -> Self:
        """The page of these items; `last_id` is the cursor of the next one."""
        ends = (data[0].id, data[-1].id) if data else (None, None)
        return cls(data=data, has_more=has_more, first_id=ends[0], last_id=ends[1])
