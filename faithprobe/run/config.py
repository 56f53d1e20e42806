"""Run configs: a TOML file (or a dict) checked against the schema (``faithprobe.run.schema``).

Every key is known and typed; an unknown key, a wrong type, a missing section or a bad value
raises ``FaithprobeError`` naming the key path (``probe.corrupt.keep_length``). The schema is
the documentation (README's table is generated from it); ``experiments/*.toml`` are examples.
Every number that sizes work or memory has a documented range (``LIMITS``, the schema's bounds),
checked before anything is allocated; seeds are 0 .. 2**32 - 1 (what numpy accepts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from faithprobe.edits.cues import CueKind
from faithprobe.errors import FaithprobeError
from faithprobe.io import check_regular_file
from faithprobe.run.schema import (
    MAX_LABEL_CHARS,
    MAX_STRING_CHARS,
    CustomCue,
    MetricsSection,
    RunSchema,
    bounds_of,
)

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["LIMITS", "RunConfig", "check_limit", "check_pairs", "check_run_pairs",
           "config_table_markdown", "custom_cue_kinds", "load_config", "placement_of",
           "summary_plan", "validate_config", "with_pairs", "without_pairs"]

# The validated config, as the run reads it: a plain dict (it is written into the run header as
# JSON), every section filled in with its defaults; its shape is ``RunSchema``'s.
RunConfig = dict[str, Any]
MAX_CONFIG_BYTES = 4 * 2**20  # a config file


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _limits(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[float, float]]:
    out = {}
    for name, info in model.model_fields.items():
        if (bounds := bounds_of(info)) is not None:
            out[prefix + name] = bounds
        if _is_model(inner := _unwrap(info.annotation)):
            out.update(_limits(inner, f"{prefix}{name}."))
    return out


# key -> (lowest, highest) allowed value, read from the schema's Field bounds (README's "Run
# configs" bounds paragraph is generated from the same)
LIMITS: dict[str, tuple[float, float]] = _limits(RunSchema)


def check_limit(key: str, value: Any, *, source: str = "config") -> None:
    """Refuse ``value`` for ``key`` outside its documented range (``LIMITS``)."""
    if key not in LIMITS:
        return
    low, high = LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaithprobeError(f"expected a number, got {type(value).__name__}", source=source,
                              field=key)
    if value != value:  # NaN
        raise FaithprobeError("must be a number, not NaN", source=source, field=key)
    if not low <= value <= high:
        kind = "at least" if value < low else "at most"
        raise FaithprobeError(f"is {value}, must be {kind} {low if value < low else high} "
                              f"(allowed: {low} to {high})", source=source, field=key)


# --- a validation error as one line naming the key path ----------------------------------------

def _walk(model: type[BaseModel], loc: Sequence[Any]) -> tuple[Any, Any]:
    """The annotation at ``loc`` below ``model`` and the field it belongs to (None for a list
    item or a table entry)."""
    annotation: Any = model
    info = None
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if _is_model(annotation) and part in annotation.model_fields:
            info = annotation.model_fields[part]
            annotation = info.annotation
        elif origin in (dict, list):
            info, annotation = None, get_args(annotation)[-1]
        else:
            break
    return _unwrap(annotation), info


def _type_name(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin is list:
        return f"a list of {_type_name(get_args(annotation)[0])}"
    if origin is dict or _is_model(annotation):
        return "a table"
    if origin is Literal:
        return "a string"
    return {str: "a string", int: "an integer", bool: "true or false",
            float: "a number"}.get(annotation, "a string, number or boolean")


def _message(model: type[BaseModel], err: Any) -> str:
    kind, loc, value = err["type"], err["loc"], err.get("input")
    annotation, info = _walk(model, loc)
    if kind == "config":
        return err["ctx"]["message"]
    if kind == "extra_forbidden":
        return f"unknown key (known here: {', '.join(_walk(model, loc[:-1])[0].model_fields)})"
    if kind == "missing":
        return ((info.json_schema_extra if info else None) or {}).get("missing", "missing key")
    if isinstance(value, float) and value != value:
        return "must be a number, not NaN"
    if kind in ("greater_than_equal", "less_than_equal") and info is not None:
        low, high = bounds_of(info)
        value = float(value) if annotation is float else value
        side = "at least" if value < low else "at most"
        return (f"is {value}, must be {side} {low if value < low else high} "
                f"(allowed: {low} to {high})")
    if kind == "literal_error":
        return f"{value!r} is not one of {', '.join(get_args(annotation))}"
    if kind == "string_too_long":
        return f"is {len(value)} characters long, over the limit of {MAX_STRING_CHARS}"
    return f"expected {_type_name(annotation)}, got {type(value).__name__}"


def _path(loc: Sequence[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _validated(model: type[BaseModel], raw: Any, source: str, prefix: str = "") -> Any:
    """``raw`` checked against ``model``; the first error as a ``FaithprobeError`` naming its
    key path (under ``prefix``)."""
    if not isinstance(raw, dict):
        raise FaithprobeError(f"expected a table, got {type(raw).__name__}", source=source,
                              field=prefix or None)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(p for p in (prefix, _path(err["loc"])) if p).replace(".[", "[")
        raise FaithprobeError(_message(model, err), source=source, field=where or None) from None
    except FaithprobeError as exc:  # a check of several keys, raised with its own key path
        raise FaithprobeError(exc.message, source=source, field=exc.field) from None


def _plain(value: Any, raw: Any) -> Any:
    """A validated value as the plain data the run reads: a table holds the keys with defaults
    (in the schema's order, unless it ``stores_defaults`` not), then the others given (in the
    order given)."""
    if isinstance(value, BaseModel):
        raw = raw if isinstance(raw, dict) else {}
        fields = type(value).model_fields
        out = {name: _plain(getattr(value, name), raw.get(name)) for name, info in fields.items()
               if value.stores_defaults and info.default is not None and not info.is_required()}
        for key in raw:
            if key not in out:
                out[key] = _plain(getattr(value, key), raw[key])
        return out
    if isinstance(value, dict):
        raw = raw if isinstance(raw, dict) else {}
        return {k: _plain(v, raw.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        raw = raw if isinstance(raw, list) else []
        return [_plain(v, raw[i] if i < len(raw) else None) for i, v in enumerate(value)]
    return value


def validate_config(raw: dict[str, Any], *, source: str = "config",
                    base_dir: Path | None = None) -> RunConfig:
    """Check ``raw`` against the schema and fill in defaults; returns the full config."""
    cfg = _plain(_validated(RunSchema, raw, source), raw)
    _check_placement(cfg, source)
    check_pairs(cfg["metrics"].get("pairs", []), list(cfg["checkpoints"]), source=source)
    data = cfg["data"]
    if data["source"] == "jsonl":
        p = Path(data["path"])
        if not p.is_absolute() and base_dir is not None:
            data["path"] = str((base_dir / p).resolve())
    return cfg


def custom_cue_kinds(cue: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """The ``[cue.custom]`` kinds of a config as ``CueKind`` objects (not registered: they
    belong to this run), each checked against the schema (``CustomCue``)."""
    out = {}
    for name, spec in cue.get("custom", {}).items():
        kind = _validated(CustomCue, spec, source, prefix=f"cue.custom.{name}")
        out[name] = CueKind(name, kind.template, kind.position, mentions=tuple(kind.mentions),
                            source="config")
    return out


def config_table_markdown() -> str:
    """README's "Run configs" table and bounds paragraph, from the schema."""
    from faithprobe.run.schema_doc import readme_block

    return readme_block()


def placement_of(cfg: RunConfig, label: str) -> dict[str, Any]:
    """``load_checkpoint`` keyword arguments for a label: the run's device, dtype and device
    map, overridden by ``[placement.<label>]``."""
    kw = {"device": cfg.get("device", "cpu"), "dtype": cfg.get("dtype", "float32"),
          "device_map": cfg.get("device_map")}
    kw.update(cfg.get("placement", {}).get(label, {}))
    return kw


def _check_placement(cfg: dict[str, Any], source: str) -> None:
    from faithprobe.models.placement import Placement

    labels = set(cfg["checkpoints"])
    if cfg["infogain"]["enabled"] and cfg["infogain"]["scorer"] != "self":
        labels.add("scorer")
    for label in cfg["placement"]:
        if label not in labels:
            raise FaithprobeError(f"no checkpoint labelled {label!r} (labels: "
                                  f"{', '.join(sorted(labels))})", source=source,
                                  field=f"placement.{label}")
    for label in sorted(labels):
        kw = placement_of(cfg, label)
        try:
            Placement(kw["device"], kw["dtype"], kw["device_map"])
        except FaithprobeError as exc:
            where = f"placement.{label}.{exc.field}" if label in cfg["placement"] and \
                exc.field in cfg["placement"][label] else exc.field
            raise FaithprobeError(f"{exc.source}: {exc.message}", source=source,
                                  field=where) from None


def check_pairs(pairs: Sequence[Sequence[str]], labels: Sequence[str] | None, *, source: str,
                where: str = "metrics.pairs[{i}]") -> None:
    """Refuse a pair that is not two different labels (of ``labels``, unless None); ``where``
    names the field (formatted with the pair's index ``i`` and its labels ``pair``)."""
    seen = set()
    for i, pair in enumerate(pairs):
        field = where.format(i=i, pair=" ".join(repr(x[:MAX_LABEL_CHARS]) for x in pair))
        if len(pair) != 2 or pair[0] == pair[1]:
            raise FaithprobeError("a pair is two different checkpoint labels, [a, b]",
                                  source=source, field=field)
        if tuple(pair) in seen:
            raise FaithprobeError("this pair is given twice", source=source, field=field)
        seen.add(tuple(pair))
        for label in pair if labels is not None else ():
            if label not in labels:
                raise FaithprobeError(f"no checkpoint labelled {label[:MAX_LABEL_CHARS]!r} "
                                      f"(labels: {', '.join(labels)})", source=source,
                                      field=field)


def check_run_pairs(config: dict[str, Any], source: str) -> None:
    """A run header's ``metrics.pairs`` (a hand-edited header too): the config's shape, and
    labels of its checkpoints."""
    metrics = config.get("metrics")
    pairs = metrics.get("pairs") if isinstance(metrics, dict) else None
    if pairs is None:
        return
    _validated(MetricsSection, {"pairs": pairs}, source, prefix="config.metrics")
    labels = config.get("checkpoints")
    check_pairs(pairs, list(labels) if isinstance(labels, dict) else None, source=source,
                where="config.metrics.pairs[{i}]")


def with_pairs(config: dict[str, Any], pairs: Sequence[Sequence[str]], labels: Sequence[str],
               *, source: str) -> dict[str, Any]:
    """``config`` comparing ``pairs`` (``score --pair``: labels of checkpoints with records)."""
    check_pairs(pairs, labels, source=source, where="--pair {pair}")
    return dict(config, metrics=dict(config["metrics"], pairs=[list(p) for p in pairs]))


def without_pairs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` less ``metrics.pairs``: the comparisons chosen change no record."""
    metrics = config.get("metrics")
    if not isinstance(metrics, dict):
        return config
    return dict(config, metrics={k: v for k, v in metrics.items() if k != "pairs"})


def summary_plan(cfg: RunConfig, labels: Sequence[str]) -> dict[str, Any]:
    """``summarize`` keyword arguments of a run: ``base``, the config's first checkpoint that
    has records (the order of the records may differ: merged shards are sorted), and ``pairs``,
    ``metrics.pairs`` where set (those whose checkpoints both have records), else ``base``
    against each other label."""
    order = [label for label in cfg.get("checkpoints") or {} if label in labels]
    order += [label for label in labels if label not in order]
    given = (cfg.get("metrics") or {}).get("pairs")
    pairs = [(order[0], other) for other in order[1:]] if given is None else \
        [(a, b) for a, b in given if a in labels and b in labels]
    return {"base": order[0] if order else None, "pairs": pairs}


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run config."""
    p = Path(path)
    if not p.exists():
        raise FaithprobeError("config file does not exist", source=str(p))
    check_regular_file(p, "config file", max_bytes=MAX_CONFIG_BYTES)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FaithprobeError("config is not UTF-8 text", source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise FaithprobeError(f"invalid TOML: {exc}", source=str(p)) from None
    return validate_config(raw, source=str(p), base_dir=p.parent)
