"""README's "Run configs" table and bounds paragraph, generated from the schema.

``python -m faithprobe.run.schema_doc README.md`` rewrites the block between the README's
``<!-- config table -->`` markers; ``--check`` exits 1 when it differs (a test runs that, in a
fresh process, so that no plugin a test registered shows up in the table).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from faithprobe.run.schema import (
    MAX_LABEL_CHARS,
    MAX_SEED,
    MAX_STRING_CHARS,
    REGISTRIES,
    RunSchema,
    bounds_of,
)

__all__ = ["BEGIN", "END", "readme_block", "write_readme"]

BEGIN = "<!-- config table: generated from faithprobe/run/schema.py by " \
        "`python -m faithprobe.run.schema_doc README.md`; edit the schema, not this -->"
END = "<!-- end of config table -->"


def _parts(annotation: Any) -> tuple[Any, list[Any]]:
    """The bare type and the metadata of ``Annotated`` layers around it."""
    meta: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        meta += more
    return annotation, meta


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _choices(info: Any) -> list[str]:
    """A field's allowed values: its ``Literal``'s, or the names its registry holds now."""
    annotation, meta = _parts(info.annotation)
    meta += info.metadata
    if get_origin(annotation) is list:
        annotation, more = _parts(get_args(annotation)[0])
        meta += more
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for m in meta:
        registry = getattr(getattr(m, "func", None), "registry", None)
        if registry is not None:
            return registry.names()
    extra = info.json_schema_extra or {}
    kind = extra.get("choices")
    return [*extra.get("also", ()), *REGISTRIES[kind].names()] if kind else []


def _key(name: str, info: Any) -> str:
    text = ", ".join(f"`{c}`" for c in _choices(info))
    if info.description:
        text = f"{text}: {info.description}" if text else info.description
    default = info.default
    if not info.is_required() and isinstance(default, (str, int, float, bool, list)):
        text += f"; default `{json.dumps(default)}`"
    return f"`{name}` ({text})" if text else f"`{name}`"


def _field_types(info: Any) -> tuple[Any, Any]:
    """A field's type (its first alternative) and, for a ``dict``, its values' type."""
    annotation = _parts(info.annotation)[0]
    inner = _parts(get_args(annotation)[-1])[0] if get_origin(annotation) is dict else None
    return annotation, inner


def _keys(model: type[BaseModel]) -> str:
    """A section's keys; a nested table's after its own name (``[probe.corrupt] ...``)."""
    own, nested = [], []
    for name, info in model.model_fields.items():
        annotation, inner = _field_types(info)
        if _is_model(annotation):
            nested.append(f"{annotation.__doc__} {_keys(annotation)}")
        elif _is_model(inner):
            own.append(f"`{name}` ({info.description}: {inner.__doc__} {_keys(inner)})")
        else:
            own.append(_key(name, info))
    return "; ".join([", ".join(own), *nested]) if nested else ", ".join(own)


def _table() -> list[str]:
    rows = ["| section | keys |", "|---|---|"]
    top = []
    for name, info in RunSchema.model_fields.items():
        annotation, inner = _field_types(info)
        if _is_model(annotation):
            rows.append(f"| `[{name}]` | {annotation.__doc__} {_keys(annotation)} |")
        elif _is_model(inner):
            rows.append(f"| {inner.__doc__} | {info.description} |")
        elif inner is not None:
            rows.append(f"| `[{name}]` | {info.description} |")
        else:
            top.append(_key(name, info))
    rows.insert(2, f"| top level | {', '.join(top)} |")
    return rows


def _number(x: float) -> str:
    if x == MAX_SEED:
        return "2**32 - 1"
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _bounds(model: type[BaseModel], prefix: str = "") -> list[tuple[str, tuple[float, float]]]:
    out = []
    for name, info in model.model_fields.items():
        if (bounds := bounds_of(info)) is not None:
            out.append((prefix + name, bounds))
        if _is_model(inner := _parts(info.annotation)[0]):
            out += _bounds(inner, f"{prefix}{name}.")
    return out


def _bounds_paragraph() -> str:
    groups: dict[tuple[float, float], list[str]] = {}
    for key, bounds in _bounds(RunSchema):
        groups.setdefault(bounds, []).append(f"`{key}`")
    parts = [f"{', '.join(keys)} {_number(low)} to {_number(high)}"
             for (low, high), keys in groups.items()]
    return textwrap.fill(
        "Numbers that size work are bounded (`faithprobe.run.config.LIMITS`, the schema's "
        f"`Field` bounds): {'; '.join(parts)}; strings at most {MAX_STRING_CHARS:,} "
        f"characters; labels at most {MAX_LABEL_CHARS} characters.", width=100,
        break_long_words=False, break_on_hyphens=False)


def readme_block() -> str:
    """The README's config block: the table, then the bounds paragraph, between the markers."""
    return "\n".join([BEGIN, *_table(), "", _bounds_paragraph(), END])


def write_readme(path: Path, *, check: bool = False) -> int:
    """Rewrite ``path``'s config block (``check``: only say whether it differs); 0 when the
    file holds the block as generated, 1 when it differed (and, unless ``check``, now does)."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + readme_block() + text[end:]
    if new == text:
        return 0
    if not check:
        path.write_text(new, encoding="utf-8")
    return 1


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(write_readme(Path(next(a for a in args if a != "--check")),
                          check="--check" in args))
