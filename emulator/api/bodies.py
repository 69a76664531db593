"""Request bodies: JSON object -> pydantic model, one way for every endpoint of the wire layer.

An empty body is the empty object (the SDK sends none for several calls, PROTOCOL.md §6); NaN and
Infinity, bad UTF-8, nesting too deep, a non-object and a model mismatch are all BadRequest naming
the problem, never a 500. The body's size is capped before this by api/body_limit.py.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from emulator.errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_raw(raw: bytes, model: type[M], what: str = "request") -> M:
    """`raw` (a JSON object, or empty for {}) as `model`. Raises BadRequest("Invalid <what>: ...")."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8 and over-long integers too; RecursionError, nesting too deep.
            raise BadRequest(f"Malformed JSON body: {str(exc)[:200] or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"The {what} body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid {what}: {problems}") from None


async def parse_body(request: Request, model: type[M], what: str = "request") -> M:
    """The request's body as `model` (see parse_raw). Raises BadRequest."""
    return parse_raw(await request.body(), model, what)
