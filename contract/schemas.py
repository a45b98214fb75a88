"""JSON Schemas of the contract formats, generated from the schemas their readers validate with.

:func:`json_schemas` gives one JSON Schema (draft 2020-12) per file format (the TOML files are
described as the JSON their TOML maps to, as TOML editors read schemas); :func:`write_schemas`
writes them as ``NAME.schema.json``. The reference documentation keeps them in
``docs/reference/schemas/``::

    python -m enclave_build.contract.schemas docs/reference/schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import measurements, policy_fragment, secrets_config, server_config, service_info
from .schema import Field, Section
from .size import SPEC_SIZE

DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: file name -> (its schema, whether the file is JSON: null is a value there)
FORMATS: dict[str, tuple[Section, bool]] = {
    "model-server.json": (server_config.SCHEMA, True),
    "measurements.json": (measurements.SCHEMA, True),
    "service.json": (service_info.SCHEMA, True),
    "secrets-policy.toml": (policy_fragment.SCHEMA, False),
    "secrets.toml": (secrets_config.SCHEMA, False),
}


def _pattern(regex: str) -> str:
    """A Python full-match regex as a JSON Schema (ECMA-262, search) pattern."""
    return "^(?:" + regex.replace(r"\Z", "$") + ")$"


def _plain(value: Any) -> Any:
    """*value* if JSON can hold it as it is, else None."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def _field(f: Field, is_json: bool) -> dict[str, Any]:
    kind = f.kind
    out: dict[str, Any]
    if kind in ("str", "path"):
        out = {"type": "string"}
        if f.choices:
            out["enum"] = list(f.choices)
        if f.pattern:
            out["pattern"] = _pattern(f.pattern)
    elif kind == "size":
        out = {"type": "string", "pattern": _pattern(SPEC_SIZE.pattern)}
    elif kind in ("int", "float"):
        out = {"type": "integer" if kind == "int" else "number"}
        if f.choices:
            out["enum"] = list(f.choices)
        if f.minimum is not None:
            out["minimum"] = f.minimum
        if f.maximum is not None:
            out["maximum"] = f.maximum
        if f.above is not None:
            out["exclusiveMinimum"] = f.above
    elif kind == "bool":
        out = {"type": "boolean"}
    elif kind == "list[str]":
        items: dict[str, Any] = {"type": "string"}
        if f.item_choices:
            items["enum"] = list(f.item_choices)
        if f.item_pattern:
            items["pattern"] = _pattern(f.item_pattern)
        out = {"type": "array", "items": items}
        if f.min_items:
            out["minItems"] = f.min_items
    elif kind == "table[str]":
        out = {"type": "object", "additionalProperties": {"type": "string"}}
    elif kind == "table[any]":
        out = {"type": "object"}
    elif kind == "table":
        assert f.section is not None
        out = section_schema(f.section, is_json)
    else:  # list[table]
        assert f.section is not None
        out = {"type": "array", "items": section_schema(f.section, is_json)}
        if f.min_items:
            out["minItems"] = f.min_items
    out["description"] = f.doc
    if f.default is not None and _plain(f.default) is not None and kind != "table":
        out["default"] = f.default
    if f.nullable and is_json:
        out = {"anyOf": [out, {"type": "null"}], "description": f.doc}
    return out


def section_schema(section: Section, is_json: bool = True) -> dict[str, Any]:
    """The JSON Schema of one table of *section* (its keys; no others)."""
    return {
        "type": "object",
        "description": section.doc,
        "properties": {f.name: _field(f, is_json) for f in section.fields},
        "required": [f.name for f in section.fields if f.required],
        "additionalProperties": False,
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> its JSON Schema."""
    out = {}
    for name, (section, is_json) in FORMATS.items():
        schema = {
            "$schema": DRAFT,
            "$id": f"https://enclave-build.dev/schemas/{name}.schema.json",
            "title": name,
            **section_schema(section, is_json),
        }
        out[name] = schema
    return out


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write every format's schema as ``DIRECTORY/NAME.schema.json``; the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(schema_text(schema), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m enclave_build.contract.schemas OUTDIR", file=sys.stderr)
        return 2
    for path in write_schemas(args[0]):
        print(path)
    return 0


__all__ = ["FORMATS", "json_schemas", "section_schema", "schema_text", "write_schemas", "main"]

if __name__ == "__main__":
    sys.exit(main())
