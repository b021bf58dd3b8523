"""Replies of a model as data: JSON out of prose, validation against a pydantic model or a JSON schema, and the
schema to ask a server for (OpenAI-style structured output) when it offers that."""
from __future__ import annotations

import json
import re
from typing import Any, Callable

Validator = Callable[[Any], Any]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Parse a JSON value from a model reply: bare JSON, a ```json fence, or the first {...} span."""
    text = text.strip()
    cands = [text] + _FENCE.findall(text)
    i, j = text.find("{"), text.rfind("}")
    if 0 <= i < j:
        cands.append(text[i : j + 1])
    for c in cands:
        try:
            return json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
    raise ValueError(f"reply is not JSON: {text[:200]!r}")


def make_validator(validate: Any) -> Validator:
    """Turn a pydantic model class / JSON-schema dict / callable / None into callable(obj) -> value."""
    if validate is None:
        return lambda obj: obj
    if isinstance(validate, dict):
        import jsonschema

        checker = jsonschema.Draft202012Validator(validate)

        def _schema(obj: Any) -> Any:
            errs = sorted(checker.iter_errors(obj), key=str)
            if errs:
                raise ValueError(f"schema violation: {errs[0].message}")
            return obj

        return _schema
    if isinstance(validate, type) and hasattr(validate, "model_validate"):
        import pydantic

        def _pyd(obj: Any) -> Any:
            try:
                return validate.model_validate(obj).model_dump()
            except pydantic.ValidationError as e:
                raise ValueError(str(e).splitlines()[0] + ": " + str(e.errors()[0]["msg"])) from None

        return _pyd
    return validate


def schema_of(validate: Any) -> dict[str, Any] | None:
    """The JSON schema behind `validate`: a schema dict, a pydantic model class's, or a callable's `json_schema`
    attribute (a checker stricter than its schema, e.g. a taxonomy); None when there is none."""
    if isinstance(validate, dict):
        return validate
    if isinstance(validate, type) and hasattr(validate, "model_json_schema"):
        return validate.model_json_schema()
    return getattr(validate, "json_schema", None)
