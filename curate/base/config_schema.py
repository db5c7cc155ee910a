"""JSON Schema from typed config dataclasses, so the published recipe schema cannot drift from code."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def type_schema(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        schemas = [type_schema(a) for a in non_null]
        if len(non_null) < len(args):
            schemas.append({"type": "null"})
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if origin is Literal:
        return {"enum": list(args)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (list, tuple, typing.Sequence, set, frozenset) or tp in (list, tuple):
        item = type_schema(args[0]) if args else {}
        return {"type": "array", "items": item}
    if origin in (dict, typing.Mapping) or tp is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1]) if len(args) == 2 else {}}
    if dataclasses.is_dataclass(tp):
        return dataclass_json_schema(tp)
    return {}


def dataclass_json_schema(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        s = dict(type_schema(hints[f.name]))
        doc = f.metadata.get("doc") if f.metadata else None
        if doc:
            s["description"] = doc
        if f.default is not dataclasses.MISSING:
            if isinstance(f.default, (int, float, str, bool)) or f.default is None:
                s["default"] = f.default
        elif f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            required.append(f.name)
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def check_config(config: Any) -> None:
    """Raise ValueError naming the first setting whose value does not match its declared type or
    `Literal` choices, so no stage re-checks its choices by hand. Runs when a stage is built."""
    import jsonschema
    if not dataclasses.is_dataclass(config):
        return
    schema = dataclass_json_schema(type(config))
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    err = next(iter(sorted(jsonschema.Draft202012Validator(schema).iter_errors(values),
                           key=lambda e: list(map(str, e.absolute_path)))), None)
    if err is not None:
        where = ".".join(str(p) for p in err.absolute_path) or "settings"
        if err.validator == "anyOf":   # jsonschema's "is not valid under any of the given schemas" names no choice
            raise ValueError(f"{where}: {err.instance!r} is not {' or '.join(map(_describe, err.validator_value))}")
        raise ValueError(f"{where}: {err.message}")


def _describe(schema: dict[str, Any]) -> str:
    """A type schema in words, for error messages ("'all'", "a list of strings", "null")."""
    if "enum" in schema:
        choices = schema["enum"]
        return repr(choices[0]) if len(choices) == 1 else f"one of {choices}"
    kind = schema.get("type")
    if kind == "array":
        items = _describe(schema.get("items") or {})
        return "a list" if items == "anything" else f"a list of {items.removeprefix('a ').removeprefix('an ')}s"
    words = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
             "object": "a mapping", "null": "null"}
    return words.get(kind, "anything")
