"""Run configs: a TOML file (or a dict) checked key by key.

Every key is known and typed; an unknown key, a wrong type, a missing section or a bad value
raises ``FaithprobeError`` naming the key path (``probe.corrupt.keep_length``). The schema below
is the documentation; ``experiments/*.toml`` are examples. Every number that sizes work or
memory has a documented range (``LIMITS``), checked before anything is allocated; seeds are
0 .. 2**32 - 1 (what numpy accepts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from faithprobe.errors import FaithprobeError
from faithprobe.io import check_regular_file

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULTS", "LIMITS", "RunConfig", "check_limit", "load_config", "placement_of",
           "validate_config"]


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
    drop_truncated: bool


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
    method: Literal["exact", "attribution", "both"]
    suppression: bool
    suppression_temperature: float


class ResampleSection(TypedDict):
    enabled: bool
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    different: Literal["any", "text", "numbers", "cosine"]
    threshold: float
    batch_size: int
    max_traces: int


class CueSection(TypedDict):
    enabled: bool
    kinds: list[str]  # registered cue kinds (faithprobe.edits.cues.CUES) or [cue.custom] names
    max_new_tokens: int
    max_traces: int
    judge: str  # a registered verbalization judge (faithprobe.judges.JUDGES)
    custom: dict[str, dict[str, Any]]  # name -> template, position, mentions


class MetricsConfig(TypedDict, total=False):
    n_boot: int
    pairs: list[list[str]]  # [a, b] label pairs compared; default the first against each


class RunConfig(TypedDict, total=False):
    name: str
    seed: int
    allow_pickle: bool
    device: str
    dtype: str
    device_map: str
    placement: dict[str, dict[str, str]]  # label (or "scorer") -> device / dtype / device_map
    threads: int
    checkpoints: dict[str, str]  # label -> spec
    data: DataConfig
    generation: GenerationConfig
    template: dict[str, str | bool]
    probe: ProbeSection
    infogain: InfogainConfig
    ki: KiConfig
    patching: PatchingConfig
    resample: ResampleSection
    cue: CueSection
    metrics: MetricsConfig
    ray: dict[str, int | float]  # --engine ray: cpus_per_task, gpus_per_task, traces_per_task

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
    "device": str,  # every checkpoint: auto | cpu | cuda | cuda:N | mps
    "dtype": str,  # every checkpoint: float32 | bfloat16 | float16 | auto (the checkpoint's own)
    "device_map": str,  # "auto": accelerate spreads a model too large for one GPU
    "placement": {"*": {"device": str, "dtype": str, "device_map": str}},  # label -> override
    "threads": int,  # torch CPU threads (default: all cores but one)
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
        "drop_truncated": bool,  # leave out generations cut by max_new_tokens (not probed)
    },
    "template": {
        "question_prefix": str,
        "reasoning_prefix": str,
        "step_prefix": str,
        "step_sep": str,
        "suffix": str,
        "answer_sep": str,
        "chat": bool,
        "thinking": bool,  # reasoning inside <think> ... </think>
        "system": str,
    },
    "probe": {
        "interventions": [str],
        "max_new_tokens": int,  # regeneration budget after a corrupted step
        "batch_size": int,
        "padding_side": str,
        "max_batch_tokens": int,  # a batch's padded size (rows x longest) at most this
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
        "method": str,  # exact | attribution (gradient estimate) | both
        "suppression": bool,  # step x step suppression matrix and receiver heads (S + 1 passes)
        "suppression_temperature": float,  # the suppression KL's softmax temperature (TA: 0.6)
    },
    "resample": {  # counterfactual resampling importance (Thought Anchors); README "Resampling"
        "enabled": bool,
        "samples": int,  # K rollouts from each prefix
        "temperature": float,
        "top_p": float,
        "max_new_tokens": int,  # a rollout's budget: the rest of the reasoning
        "different": str,  # any | text | numbers | cosine: when a resampled step counts
        "threshold": float,  # cosine: different below this similarity of hidden states
        "batch_size": int,  # rollouts generated together
        "max_traces": int,  # resample at most this many traces per checkpoint
    },
    "cue": {  # cue tests (Turpin et al., Chen et al.); README "Cue tests"
        "enabled": bool,
        "kinds": [str],  # sycophancy, metadata, few_shot, tag (organisms), or a [cue.custom] name
        "max_new_tokens": int,  # the budget of each reasoning written, uncued and cued
        "max_traces": int,  # test at most this many traces per checkpoint
        "judge": str,  # who decides whether cued reasoning mentions the cue (default: rule)
        "custom": {"*": {  # name -> a cue kind of your own
            "template": str,  # text holding {target}
            "position": str,  # before | after the question
            "mentions": [str],  # words that count as mentioning it
        }},
    },
    "metrics": {
        "n_boot": int,
        "pairs": [[str]],  # [a, b]: b compared with a; default the first label against each
    },
    # --engine ray only (optional; it does not change any record)
    "ray": {
        "cpus_per_task": int,  # CPUs a task asks for (torch threads in it)
        "gpus_per_task": float,  # GPUs a task of a checkpoint placed on a GPU asks for
        "traces_per_task": int,  # traces in one task (default: about 4 tasks a CPU)
    },
}

DEFAULTS: dict[str, Any] = {
    "name": "faithprobe run",
    "seed": 0,
    "allow_pickle": False,
    "device": "cpu",
    "dtype": "float32",
    "placement": {},
    "data": {"source": "organism", "split": "id", "seed": 0, "traces": "file"},
    "generation": {"max_new_tokens": 256, "temperature": 0.0, "split": "auto", "max_steps": 12,
                   "drop_truncated": False},
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
                 "directions": ["noising"], "max_traces": 20, "knockout": True,
                 "method": "exact", "suppression": False, "suppression_temperature": 1.0},
    "resample": {"enabled": False, "samples": 8, "temperature": 0.6, "top_p": 0.95,
                 "max_new_tokens": 256, "different": "text", "threshold": 0.8,
                 "batch_size": 64, "max_traces": 20},
    "cue": {"enabled": False, "kinds": ["sycophancy", "metadata", "few_shot"],
            "max_new_tokens": 256, "max_traces": 100_000, "judge": "rule", "custom": {}},
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
    "patching.method": ("exact", "attribution", "both"),
    "resample.different": ("any", "text", "numbers", "cosine"),
}
_CUE_POSITIONS = ("before", "after")
# key -> (lowest, highest) allowed value: README's "Run configs" limits
MAX_SEED = 2**32 - 1
LIMITS: dict[str, tuple[float, float]] = {
    "seed": (0, MAX_SEED),
    "data.seed": (0, MAX_SEED),
    "data.count": (1, 100_000),
    "metrics.n_boot": (1, 20_000),
    "probe.batch_size": (1, 4_096),
    "probe.max_new_tokens": (1, 65_536),
    "probe.corrupt.tries": (1, 1_000),
    "generation.max_new_tokens": (1, 65_536),
    "generation.max_steps": (1, 10_000),
    "generation.temperature": (0.0, 100.0),
    "patching.max_traces": (1, 100_000),
    "patching.suppression_temperature": (0.01, 100.0),
    "threads": (1, 1_024),
    "probe.max_batch_tokens": (1, 10**9),
    "resample.samples": (2, 10_000),
    "resample.temperature": (0.01, 100.0),
    "resample.top_p": (0.01, 1.0),
    "resample.max_new_tokens": (1, 65_536),
    "resample.threshold": (-1.0, 1.0),
    "resample.batch_size": (1, 4_096),
    "resample.max_traces": (1, 100_000),
    "cue.max_new_tokens": (1, 65_536),
    "cue.max_traces": (1, 100_000),
    "ray.cpus_per_task": (1, 1_024),
    "ray.gpus_per_task": (0.0, 64.0),
    "ray.traces_per_task": (1, 100_000),
}
MAX_STRING_CHARS = 200_000  # any string value of a config
MAX_LABEL_CHARS = 64  # a checkpoint label (it names files in the run folder)
MAX_CONFIG_BYTES = 4 * 2**20  # a config file


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
    if schema is float and value != value:  # NaN
        raise FaithprobeError("must be a number, not NaN", source=source, field=path)
    check_limit(path, value, source=source)
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise FaithprobeError(f"is {len(value)} characters long, over the limit of "
                              f"{MAX_STRING_CHARS}", source=source, field=path)
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
                                  field=f"checkpoints.{label[:MAX_LABEL_CHARS]}")
        if len(label) > MAX_LABEL_CHARS:
            raise FaithprobeError(f"a label is at most {MAX_LABEL_CHARS} characters",
                                  source=source, field=f"checkpoints.{label[:MAX_LABEL_CHARS]}")
    cfg = _merge(DEFAULTS, checked)
    _check_placement(cfg, source)
    check_pairs(cfg["metrics"].get("pairs", []), list(cfg["checkpoints"]), source=source)
    check_cue(cfg["cue"], source)
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


def custom_cue_kinds(cue: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """The ``[cue.custom]`` kinds of a config as ``CueKind`` objects (not registered: they
    belong to this run), each checked (a template without ``{target}`` names its key)."""
    from faithprobe.edits.cues import CueKind

    out = {}
    for name, spec in cue.get("custom", {}).items():
        where = f"cue.custom.{name}"
        if "template" not in spec:
            raise FaithprobeError("a custom cue kind needs a template holding {target}",
                                  source=source, field=f"{where}.template")
        position = spec.get("position", "before")
        if position not in _CUE_POSITIONS:
            raise FaithprobeError(f"{position!r} is not one of {', '.join(_CUE_POSITIONS)}",
                                  source=source, field=f"{where}.position")
        try:
            out[name] = CueKind(name, spec["template"], position,
                                mentions=tuple(spec.get("mentions", ())), source="config")
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=source,
                                  field=f"{where}.{(exc.field or '').rsplit('.', 1)[-1]}"
                                  ) from None
    return out


def check_cue(cue: dict[str, Any], source: str = "config") -> None:
    """``[cue]``: every kind registered or custom, named once; custom kinds well formed and not
    shadowing a registered one; the judge registered."""
    from faithprobe.edits.cues import CUES
    from faithprobe.judges import JUDGES

    custom = custom_cue_kinds(cue, source)
    for name in custom:
        if name in CUES:
            raise FaithprobeError(f"{name!r} is a built-in cue kind; name yours otherwise",
                                  source=source, field=f"cue.custom.{name}")
    if not cue["kinds"]:
        raise FaithprobeError("name at least one cue kind", source=source, field="cue.kinds")
    for i, name in enumerate(cue["kinds"]):
        if name not in CUES and name not in custom:
            known = ", ".join([*CUES.names(), *custom])
            raise FaithprobeError(f"unknown cue kind {name!r} (known: {known})",
                                  source=source, field=f"cue.kinds[{i}]")
        if name in cue["kinds"][:i]:
            raise FaithprobeError(f"cue kind {name!r} is named twice", source=source,
                                  field=f"cue.kinds[{i}]")
    if cue["judge"] not in JUDGES:
        raise FaithprobeError(f"unknown judge {cue['judge']!r} (known: "
                              f"{', '.join(JUDGES.names())})", source=source, field="cue.judge")


def placement_of(cfg: RunConfig | dict[str, Any], label: str) -> dict[str, Any]:
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
    _check(pairs, SCHEMA["metrics"]["pairs"], "config.metrics.pairs", source)
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


def summary_plan(cfg: RunConfig | dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
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
