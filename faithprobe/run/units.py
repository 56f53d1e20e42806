"""A run's units of work, the same for every engine (local loop or Ray tasks).

A unit is one checkpoint's probe of a list of traces, with the activation patching and the
counterfactual resampling of those of them the run patches or resamples. Which traces those are
is decided once over the whole, unsharded trace list (:func:`select_traces`), so shards and
engines patch and resample the same traces as one local run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.records import Record
from faithprobe.run.config import RunConfig

__all__ = ["CUE_EXAMPLE_POOL", "Selection", "abstain_records", "cue_kinds", "cue_records",
           "parse_shard", "probe_config", "probe_traces", "probed_generated", "resample_config",
           "select_traces", "shard_traces", "template_of", "truncated_ids", "unlearn_config",
           "unlearn_split"]


@dataclass(frozen=True)
class Selection:
    """What a run decides over its whole trace list: the ids of the traces it patches, those it
    resamples, those it cue-tests, those it unlearns and those it asks unanswerable twins of,
    the questions its few-shot cues show as examples, and the traces unlearning draws its
    retain texts from and measures its specificity on (as given: a generated run's are the
    source's)."""

    patch: frozenset[str] = frozenset()
    resample: frozenset[str] = frozenset()
    cue: frozenset[str] = frozenset()
    cue_examples: tuple[str, ...] = ()
    unlearn: frozenset[str] = frozenset()
    unlearn_pool: tuple[Trace, ...] = ()
    unlearn_control: tuple[Trace, ...] = ()
    abstain: frozenset[str] = frozenset()


CUE_EXAMPLE_POOL = 8  # the few-shot cue's examples come from the first questions of the run


def template_of(cfg: RunConfig, ckpt: Any, source: str = "config") -> Any:
    """The prompt template a run uses for a checkpoint: its own, with the config's
    ``[template]`` overrides (errors name ``source``)."""
    from faithprobe.data.prompts import PromptTemplate

    if not cfg["template"]:
        return ckpt.template
    return PromptTemplate.from_json({**ckpt.template.to_json(), **cfg["template"]},
                                    source=f"{source} [template]")


def probe_config(cfg: RunConfig):
    """The :class:`~faithprobe.stages.probe.ProbeConfig` of a run config."""
    from faithprobe.stages.probe import ProbeConfig

    p = cfg["probe"]
    options = {name: dict(p[name]) for name in ("corrupt", "paraphrase", "filler")
               if name in p and name in p["interventions"]}
    return ProbeConfig(
        interventions=tuple(p["interventions"]),
        options=options,
        infogain=cfg["infogain"]["enabled"],
        infogain_ppl=cfg["infogain"]["enabled"] and cfg["infogain"]["ppl"],
        ki=cfg["ki"]["enabled"],
        max_new_tokens=p["max_new_tokens"],
        batch_size=p["batch_size"],
        max_batch_tokens=p.get("max_batch_tokens"),
        padding_side=p["padding_side"],
        seed=cfg["seed"],
    )


def select_traces(cfg: RunConfig, trace_ids: Sequence[str],
                  questions: Sequence[str] = (), traces: Sequence[Trace] = ()) -> Selection:
    """The traces a run patches, the first ``patching.max_traces`` of the whole trace list,
    those it resamples, the first ``resample.max_traces``, those it cue-tests, the first
    ``cue.max_traces``, with the few-shot cue's example questions, the first of ``questions``,
    those it unlearns (:func:`unlearn_split` of ``traces``) and those it asks twins of, the
    first ``abstain.max_traces`` (every shard and every engine gets the same)."""
    resample = cfg.get("resample", {})
    cue = cfg.get("cue", {})
    abstain = cfg.get("abstain", {})
    pool: Sequence[Trace] = ()
    control: Sequence[Trace] = ()
    if cfg.get("unlearn", {}).get("enabled"):
        pool, control = unlearn_split(cfg, traces)
    return Selection(
        frozenset(trace_ids[: cfg["patching"]["max_traces"]] if cfg["patching"]["enabled"]
                  else ()),
        frozenset(trace_ids[: resample["max_traces"]] if resample.get("enabled") else ()),
        frozenset(trace_ids[: cue["max_traces"]] if cue.get("enabled") else ()),
        tuple(questions[:CUE_EXAMPLE_POOL]) if cue.get("enabled") else (),
        frozenset(t.id for t in pool[: cfg["unlearn"]["max_traces"]]) if pool else frozenset(),
        tuple(pool), tuple(control),
        frozenset(trace_ids[: abstain["max_traces"]] if abstain.get("enabled") else ()))


def unlearn_split(cfg: RunConfig, traces: Sequence[Trace]
                  ) -> tuple[list[Trace], list[Trace]]:
    """(pool, control): the last ``unlearn.control_traces`` traces are the control set (at
    most all but two), never unlearned; the rest are the pool the unlearned traces (its
    first ``unlearn.max_traces``) and their retain texts come from."""
    n = max(0, min(cfg["unlearn"]["control_traces"], len(traces) - 2))
    return list(traces[: len(traces) - n]), list(traces[len(traces) - n:])


def unlearn_config(cfg: RunConfig):
    """The :class:`~faithprobe.stages.unlearn.UnlearnConfig` of a run config."""
    from faithprobe.stages.unlearn import UnlearnConfig

    u, gen = cfg["unlearn"], cfg["generation"]
    return UnlearnConfig(epochs=u["epochs"], lr=u["lr"], params=tuple(u["params"]),
                         retain_traces=u["retain_traces"],
                         efficacy_threshold=u["efficacy_threshold"],
                         max_new_tokens=u["max_new_tokens"], split=gen["split"],
                         max_steps=gen["max_steps"], batch_size=cfg["probe"]["batch_size"],
                         seed=cfg["seed"])


def resample_config(cfg: RunConfig):
    """The :class:`~faithprobe.stages.resample.ResampleConfig` of a run config."""
    from faithprobe.stages.resample import ResampleConfig

    r = cfg["resample"]
    return ResampleConfig(samples=r["samples"], temperature=r["temperature"], top_p=r["top_p"],
                          max_new_tokens=r["max_new_tokens"], different=r["different"],
                          threshold=r["threshold"], batch_size=r["batch_size"],
                          seed=cfg["seed"])


def truncated_ids(traces: Sequence[Trace]) -> list[str]:
    """Ids of generated traces whose generation hit its token budget before a stop string
    (their last step may be a fragment such as "So, the")."""
    return [t.id for t in traces if t.metadata.get("generation_stopped") is False]


def probed_generated(cfg: RunConfig, traces: list[Trace]) -> list[Trace]:
    """A checkpoint's generated traces as the run probes them: without the truncated ones
    where ``[generation] drop_truncated`` says so (the saved file keeps them all)."""
    if not cfg["generation"].get("drop_truncated"):
        return traces
    cut = set(truncated_ids(traces))
    kept = [t for t in traces if t.id not in cut]
    if traces and not kept:
        raise FaithprobeError(f"every generated trace hit generation.max_new_tokens "
                              f"({cfg['generation']['max_new_tokens']}), and drop_truncated "
                              "leaves none to probe: raise max_new_tokens",
                              field="generation.drop_truncated")
    return kept


def cue_kinds(cfg: RunConfig) -> list[Any]:
    """The run's cue kinds as ``CueKind`` objects: its own (``[cue.custom]``) or registered."""
    from faithprobe.edits.cues import cue_kind
    from faithprobe.run.config import custom_cue_kinds

    custom = custom_cue_kinds(cfg["cue"])
    return [custom[name] if name in custom else cue_kind(name) for name in cfg["cue"]["kinds"]]


def cue_records(cfg: RunConfig, ckpt: Any, label: str, traces: Sequence[Trace], template: Any,
                selection: Selection) -> dict[str, list[Record]]:
    """The cue test's records of ``traces`` (those ``selection`` names), batched."""
    from faithprobe.judges import JUDGES
    from faithprobe.stages.cue import cue_test

    todo = [t for t in traces if t.id in selection.cue]
    if not todo:
        return {}
    gen = cfg["generation"]
    return cue_test(ckpt, label, todo, template, cue_kinds(cfg),
                    examples=selection.cue_examples, judge=JUDGES.get(cfg["cue"]["judge"]),
                    max_new_tokens=cfg["cue"]["max_new_tokens"], split=gen["split"],
                    max_steps=gen["max_steps"], batch_size=cfg["probe"]["batch_size"],
                    seed=cfg["seed"])


def abstain_records(cfg: RunConfig, ckpt: Any, label: str, traces: Sequence[Trace],
                    template: Any, selection: Selection) -> dict[str, list[Record]]:
    """The abstention test's records of ``traces`` (those ``selection`` names), batched."""
    from faithprobe.stages.abstain import abstain_test

    todo = [t for t in traces if t.id in selection.abstain]
    if not todo:
        return {}
    a, gen = cfg["abstain"], cfg["generation"]
    return abstain_test(ckpt, label, todo, template, answer=a["answer"],
                        instruction=a["instruction"], max_new_tokens=a["max_new_tokens"],
                        split=gen["split"], max_steps=gen["max_steps"],
                        batch_size=cfg["probe"]["batch_size"], seed=cfg["seed"])


def patch_records(cfg: RunConfig, ckpt: Any, label: str, trace: Trace, template: Any,
                  fast_path: Any) -> list[Record]:
    """The patching stage's records of one trace, as the config asks."""
    from faithprobe.stages.patching import patch_trace

    corrupter = cfg["probe"].get("corrupt", {}).get("corrupter", "auto")
    records = patch_trace(ckpt, label, trace, template, components=cfg["patching"]["components"],
                          directions=cfg["patching"]["directions"],
                          knockout=cfg["patching"]["knockout"], corrupter=corrupter,
                          seed=cfg["seed"], fast_path=fast_path,
                          method=cfg["patching"].get("method", "exact"),
                          corrupted=cfg["patching"].get("corrupted", "each"))
    if cfg["patching"].get("suppression"):
        from faithprobe.stages.suppression import suppression_trace

        records += suppression_trace(
            ckpt, label, trace, template,
            temperature=cfg["patching"].get("suppression_temperature", 1.0))
    return records


def probe_traces(cfg: RunConfig, ckpt: Any, label: str, template: Any,
                 traces: Sequence[Trace], *, scorer: Any = None,
                 selection: Selection = Selection(),
                 fast_path: Any = None) -> Iterator[tuple[Trace, list[Record]]]:
    """Each trace with all its records: probe, then patching, resampling and unlearning where
    ``selection`` names it."""
    from faithprobe.stages.probe import iter_probe

    rcfg = resample_config(cfg) if selection.resample else None
    cued: dict[str, list[Record]] = {}
    tested = [t for t in traces if t.id in selection.cue]
    position = {t.id: i for i, t in enumerate(tested)}
    asked: dict[str, list[Record]] = {}
    twinned = [t for t in traces if t.id in selection.abstain]
    twin_at = {t.id: i for i, t in enumerate(twinned)}
    chunk = max(1, cfg["probe"]["batch_size"])
    for trace, records in zip(traces, iter_probe(ckpt, label, traces, probe_config(cfg),
                                                 template=template, scorer=scorer)):
        if trace.id in selection.cue:
            if trace.id not in cued:  # the next batch of cue-tested traces, from this one on
                at = position[trace.id]
                cued.update(cue_records(cfg, ckpt, label, tested[at: at + chunk], template,
                                        selection))
            records = records + cued.pop(trace.id)
        if trace.id in selection.abstain:
            if trace.id not in asked:  # the next batch of asked traces, from this one on
                at = twin_at[trace.id]
                asked.update(abstain_records(cfg, ckpt, label, twinned[at: at + chunk],
                                             template, selection))
            records = records + asked.pop(trace.id)
        if trace.id in selection.patch:
            records = records + patch_records(cfg, ckpt, label, trace, template, fast_path)
        if rcfg is not None and trace.id in selection.resample:
            from faithprobe.stages.resample import resample_trace

            records = records + resample_trace(ckpt, label, trace, template, rcfg,
                                               score_batch_size=cfg["probe"]["batch_size"])
        if trace.id in selection.unlearn:
            from faithprobe.stages.unlearn import unlearn_trace

            records = records + unlearn_trace(ckpt, label, trace, template, unlearn_config(cfg),
                                              pool=selection.unlearn_pool,
                                              control=selection.unlearn_control)
        yield trace, records


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` as (K, N); None when not given."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FaithprobeError("expected K/N, e.g. 2/8", field="--shard") from None
    if not 1 <= k <= n:
        raise FaithprobeError(f"shard {k} of {n} is out of range (1 <= K <= N)",
                              field="--shard")
    return k, n


def shard_traces(traces: list[Trace], shard: tuple[int, int] | None) -> list[Trace]:
    """The K-th of N disjoint slices of ``traces`` (every N-th trace from the K-th on)."""
    if shard is None:
        return traces
    k, n = shard
    return [t for i, t in enumerate(traces) if i % n == k - 1]
