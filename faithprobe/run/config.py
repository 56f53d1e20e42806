"""Run configs: a TOML file (or a dict) checked key by key.

Every key is known and typed; an unknown key, a wrong type, a missing section or a bad value
raises ``FaithprobeError`` naming the key path (``probe.corrupt.keep_length``). The schema below
is the documentation; ``experiments/*.toml`` are examples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypedDict

from faithprobe.errors import FaithprobeError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULTS", "RunConfig", "load_config", "validate_config"]


# The validated config, as the run reads it. It stays a plain dict at run time (it is written
# into the run header as JSON); these types say what each section holds once defaults are in.
class DataConfig(TypedDict, total=False):
    source: Literal["organism", "jsonl", "reasoning_gym"]
    path: str
    split: Literal["id", "ood"]
    task: str
    task_options: dict[str, str | int | float | bool]
    count: int
    seed: int
    traces: Literal["file", "generate"]


class GenerationConfig(TypedDict):
    max_new_tokens: int
    temperature: float
    split: Literal["auto", "lines", "markers", "sentences"]
    max_steps: int


class ProbeSection(TypedDict, total=False):
    interventions: list[str]
    max_new_tokens: int
    batch_size: int
    padding_side: Literal["left", "right"]
    corrupt: dict[str, Any]
    paraphrase: dict[str, Any]
    filler: dict[str, Any]


class InfogainConfig(TypedDict):
    enabled: bool
    scorer: str  # "self" or a checkpoint spec
    ppl: bool


class KiConfig(TypedDict):
    enabled: bool


class PatchingConfig(TypedDict):
    enabled: bool
    components: list[Literal["resid_pre", "attn_out", "mlp_out"]]
    directions: list[Literal["noising", "denoising"]]
    max_traces: int
    knockout: bool


class MetricsConfig(TypedDict):
    n_boot: int


class RunConfig(TypedDict):
    name: str
    seed: int
    allow_pickle: bool
    checkpoints: dict[str, str]  # label -> spec
    data: DataConfig
    generation: GenerationConfig
    template: dict[str, str | bool]
    probe: ProbeSection
    infogain: InfogainConfig
    ki: KiConfig
    patching: PatchingConfig
    metrics: MetricsConfig

_INTERVENTION_OPTIONS = {
    "truncate": {},
    "corrupt": {"corrupter": str, "continuations": [str], "keep_length": bool, "tries": int},
    "paraphrase": {"source": str},
    "filler": {"scope": [str], "unit": str},
    "delete": {},
}

# key -> type (a dict is a section, [T] a list of T); comments say what each means
SCHEMA: dict[str, Any] = {
    "name": str,  # run name, shown in reports
    "seed": int,  # seeds corruption choices, sampling and bootstrap
    "checkpoints": {"*": str},  # label -> checkpoint spec (organism:base, a folder, smollm2...)
    "allow_pickle": bool,  # let pickle checkpoints load (with weights_only=True)
    "data": {
        "source": str,  # organism | jsonl | reasoning_gym
        "path": str,  # jsonl: the trace file (relative to the config file)
        "split": str,  # organism: id | ood
        "task": str,  # reasoning_gym: task name (gsm_symbolic, basic_arithmetic...)
        "task_options": {"*": "scalar"},  # reasoning_gym: the task's own config fields
        "count": int,  # how many problems
        "seed": int,  # data seed
        "traces": str,  # file: use the traces as given | generate: each checkpoint writes its own
    },
    "generation": {
        "max_new_tokens": int,  # length limit of a generated chain of thought
        "temperature": float,  # 0 = greedy
        "split": str,  # how generated reasoning is cut into steps: auto|lines|markers|sentences
        "max_steps": int,  # keep at most this many steps of a generated trace
    },
    "template": {
        "question_prefix": str,
        "reasoning_prefix": str,
        "step_prefix": str,
        "step_sep": str,
        "suffix": str,
        "answer_sep": str,
        "chat": bool,
        "system": str,
    },
    "probe": {
        "interventions": [str],
        "max_new_tokens": int,  # regeneration budget after a corrupted step
        "batch_size": int,
        "padding_side": str,
        **{name: opts for name, opts in _INTERVENTION_OPTIONS.items() if opts},
    },
    "infogain": {
        "enabled": bool,
        "scorer": str,  # "self" or a checkpoint spec (a fixed model, the same ruler for all)
        "ppl": bool,  # also the whole-string perplexity form
    },
    "ki": {"enabled": bool},
    "patching": {
        "enabled": bool,
        "components": [str],  # resid_pre, attn_out, mlp_out
        "directions": [str],  # noising (corrupted step into the clean run), denoising
        "max_traces": int,  # patch at most this many traces per checkpoint (it is the slow part)
        "knockout": bool,  # attention knockout of each step
    },
    "metrics": {"n_boot": int},
}

DEFAULTS: dict[str, Any] = {
    "name": "faithprobe run",
    "seed": 0,
    "allow_pickle": False,
    "data": {"source": "organism", "split": "id", "seed": 0, "traces": "file"},
    "generation": {"max_new_tokens": 256, "temperature": 0.0, "split": "auto", "max_steps": 12},
    "template": {},
    "probe": {
        "interventions": ["truncate", "corrupt", "paraphrase", "filler", "delete"],
        "max_new_tokens": 48,
        "batch_size": 16,
        "padding_side": "right",
    },
    "infogain": {"enabled": True, "scorer": "self", "ppl": True},
    "ki": {"enabled": True},
    "patching": {"enabled": True, "components": ["resid_pre", "attn_out", "mlp_out"],
                 "directions": ["noising"], "max_traces": 20, "knockout": True},
    "metrics": {"n_boot": 1000},
}

_CHOICES = {
    "data.source": ("organism", "jsonl", "reasoning_gym"),
    "data.split": ("id", "ood"),
    "data.traces": ("file", "generate"),
    "generation.split": ("auto", "lines", "markers", "sentences"),
    "probe.padding_side": ("left", "right"),
    "probe.corrupt.continuations": ("keep", "regenerate"),
    "probe.filler.scope": ("all", "step"),
    "probe.interventions": tuple(_INTERVENTION_OPTIONS),
    "patching.components": ("resid_pre", "attn_out", "mlp_out"),
    "patching.directions": ("noising", "denoising"),
}
_POSITIVE = {"data.count", "probe.batch_size", "probe.max_new_tokens", "metrics.n_boot",
             "generation.max_new_tokens", "generation.max_steps", "patching.max_traces",
             "probe.corrupt.tries"}


def _type_name(t: Any) -> str:
    if isinstance(t, list):
        return f"a list of {_type_name(t[0])}"
    if isinstance(t, dict):
        return "a table"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}[t]


def _check(value: Any, schema: Any, path: str, source: str) -> Any:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise FaithprobeError(f"expected a table, got {type(value).__name__}",
                                  source=source, field=path)
        out = {}
        for key, v in value.items():
            sub = schema.get(key, schema.get("*"))
            where = f"{path}.{key}" if path else key
            if sub is None:
                known = ", ".join(k for k in schema if k != "*")
                raise FaithprobeError(f"unknown key (known here: {known})", source=source,
                                      field=where)
            out[key] = _check(v, sub, where, source)
        return out
    if schema == "scalar":
        if isinstance(value, (dict, list)) or (isinstance(value, float) and value != value):
            raise FaithprobeError("expected a string, number or boolean", source=source,
                                  field=path)
        return value
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise FaithprobeError(f"expected {_type_name(schema)}, got {type(value).__name__}",
                                  source=source, field=path)
        return [_check(v, schema[0], f"{path}[{i}]", source) for i, v in enumerate(value)]
    ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
    if schema is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise FaithprobeError(f"expected {_type_name(schema)}, got {type(value).__name__}",
                              source=source, field=path)
    if path.split("[")[0] in _CHOICES and value not in _CHOICES[path.split("[")[0]]:
        raise FaithprobeError(
            f"{value!r} is not one of {', '.join(_CHOICES[path.split('[')[0]])}",
            source=source, field=path)
    if path in _POSITIVE and value < 1:
        raise FaithprobeError("must be at least 1", source=source, field=path)
    if schema is float and value != value:  # NaN
        raise FaithprobeError("must be a number, not NaN", source=source, field=path)
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate_config(raw: dict[str, Any], *, source: str = "config",
                    base_dir: Path | None = None) -> RunConfig:
    """Check ``raw`` against the schema and fill in defaults; returns the full config."""
    checked = _check(raw, SCHEMA, "", source)
    if "checkpoints" not in checked:
        raise FaithprobeError("missing section", source=source, field="checkpoints")
    if len(checked["checkpoints"]) < 1:
        raise FaithprobeError("name at least one checkpoint", source=source,
                              field="checkpoints")
    for label in checked["checkpoints"]:
        if not label.replace("-", "").replace("_", "").isalnum():
            raise FaithprobeError("a label is letters, digits, - and _", source=source,
                                  field=f"checkpoints.{label}")
    cfg = _merge(DEFAULTS, checked)
    data = cfg["data"]
    if data["source"] == "jsonl":
        if "path" not in data:
            raise FaithprobeError("source jsonl needs a path", source=source, field="data.path")
        p = Path(data["path"])
        if not p.is_absolute() and base_dir is not None:
            data["path"] = str((base_dir / p).resolve())
    if data["source"] == "reasoning_gym" and "task" not in data:
        raise FaithprobeError("source reasoning_gym needs a task", source=source,
                              field="data.task")
    return cfg  # type: ignore[return-value]  # checked against SCHEMA above


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run config."""
    p = Path(path)
    if not p.is_file():
        raise FaithprobeError("config file does not exist", source=str(p))
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FaithprobeError("config is not UTF-8 text", source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise FaithprobeError(f"invalid TOML: {exc}", source=str(p)) from None
    return validate_config(raw, source=str(p), base_dir=p.parent)
