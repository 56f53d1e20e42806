"""The preflight of a run: every input checked, and loaded once, before its folder exists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithprobe.data.traces import Trace, check_fit, trace_warnings
from faithprobe.errors import FaithprobeError
from faithprobe.io import read_json
from faithprobe.models.placement import Placement, checkpoint_hardware
from faithprobe.run.config import RunConfig, placement_of
from faithprobe.run.fingerprint import checkpoint_fingerprint, package_version, traces_fingerprint
from faithprobe.run.layout import HEADER, MAX_WARNING_IDS, content
from faithprobe.run.resume import check_labels, check_resume
from faithprobe.run.units import Selection

__all__ = ["Prepared", "check_out", "hardware", "prepare_run", "warnings_entry"]


def check_out(out: Path, *, resume: bool) -> None:
    """``--out`` can become this run's folder: a folder or nothing, empty unless resuming, and
    its nearest existing parent writable. Checked before anything is loaded."""
    if out.exists() and not out.is_dir():
        raise FaithprobeError("exists and is not a folder", source=str(out), field="--out")
    if out.is_dir() and content(out) and not (resume and (out / HEADER).exists()):
        raise FaithprobeError(
            "output folder exists and is not empty (use --resume to complete a killed run, or "
            "another --out)" if not resume else "holds no run header to resume; choose another "
            "--out", source=str(out), field="--out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FaithprobeError(f"cannot be created: {parent} is not a folder", source=str(out),
                              field="--out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FaithprobeError(f"cannot be created: {parent} is not writable", source=str(out),
                              field="--out")


def warnings_entry(found: dict[str, list[str]]) -> dict[str, Any]:
    """The header's ``warnings``: kind -> ``{"count", "traces"}`` (at most MAX_WARNING_IDS ids)."""
    return {kind: {"count": len(ids), "traces": ids[:MAX_WARNING_IDS]}
            for kind, ids in sorted(found.items())}


@dataclass
class Prepared:
    """What the preflight checked and loaded, kept for the run (nothing is loaded twice)."""

    traces: list[Trace]
    checkpoints: dict[str, Any]  # label -> Checkpoint (one object per distinct spec)
    templates: dict[str, Any]  # label -> PromptTemplate
    scorer: Any = None  # the fixed InfoGain scorer, if any
    warnings: dict[str, Any] = field(default_factory=dict)
    context: dict[str, dict[str, int]] = field(default_factory=dict)
    selection: Any = None  # units.Selection: decided over the whole trace list, not the shard
    inputs: dict[str, Any] = field(default_factory=dict)  # fingerprint.* of what was loaded
    ray_started: bool = False  # the preflight joined Ray: the run leaves it at its end
    device_map_ignored: list[str] = field(default_factory=list)  # labels (roles): no GPU


def prepare_run(cfg: RunConfig, out: Path, *, resume: bool = False,
                shard: tuple[int, int] | None = None, config_source: str = "config",
                on_cpu: bool = False, engine: str = "local",
                ray_address: str | None = None) -> Prepared:
    """Every check a run makes before its folder exists: the output location, the traces, the
    Ray cluster (``engine="ray"``: joined, or started, at ``ray_address``), the interventions,
    each checkpoint (loaded once), each template with each tokenizer, every trace against each
    context. Raises FaithprobeError naming the input.

    ``on_cpu``: load the checkpoints on the CPU whatever their placement (the Ray engine's
    driver, which only checks them; its tasks load them where the config places them)."""
    from faithprobe.data.sources import load_traces
    from faithprobe.run.units import shard_traces

    check_out(Path(out), resume=resume)
    check_labels(cfg, config_source)
    if resume and (Path(out) / HEADER).is_file():  # a config that differs: before any loading
        check_resume(read_json(Path(out) / HEADER, "run header"), cfg, shard, None,
                     source=str(out))
    try:
        every = load_traces(cfg["data"])
        traces = shard_traces(every, shard)
        trace_print = traces_fingerprint(cfg["data"], every)
    except FaithprobeError as exc:
        if exc.line is not None or exc.field is not None:
            raise
        raise FaithprobeError(str(exc), source=config_source, field="data.path") from None
    if not traces:
        raise FaithprobeError("this shard holds no traces", field="--shard")
    started = False
    if engine == "ray":  # joined before a checkpoint is loaded; an address nowhere is refused
        from faithprobe.run.ray_connect import connect

        started = connect(ray_address)
    try:
        prep = _check_inputs(cfg, every, traces, trace_print, config_source=config_source,
                             on_cpu=on_cpu or engine == "ray")
    except BaseException:
        if started:
            from faithprobe.run.ray_connect import disconnect

            disconnect()
        raise
    prep.ray_started = started
    return prep


def _check_inputs(cfg: RunConfig, every: list[Trace], traces: list[Trace], trace_print: Any, *,
                  config_source: str, on_cpu: bool) -> Prepared:
    """The checks of :func:`prepare_run` after the traces are read: the interventions, each
    checkpoint loaded once, each template with each tokenizer, every trace against each
    context."""
    from faithprobe.edits.interventions import make_intervention
    from faithprobe.models.checkpoints import check_same_tokenizer, preflight
    from faithprobe.run.units import probe_config, select_traces, template_of

    probe_cfg = probe_config(cfg)
    for name in probe_cfg.interventions:
        try:
            make_intervention(name, **probe_cfg.options.get(name, {}))
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=config_source,
                                  field=f"probe.{name}") from None
    loaded: dict[tuple, Any] = {}
    ignored: list[str] = []  # labels whose device_map = "auto" this machine ignores

    def load(key: str, spec: str, label: str) -> Any:
        where = placement_of(cfg, label)
        if on_cpu:
            where = {"device": "cpu", "dtype": where["dtype"]}
        elif where.get("device_map") and Placement(**where).on_this_machine().device_map is None:
            ignored.append(label)
        ident = (spec, *sorted(where.items()))
        if ident not in loaded:
            try:
                loaded[ident] = preflight(spec, allow_pickle=cfg["allow_pickle"], **where)
            except FaithprobeError as exc:
                raise FaithprobeError(str(exc), source=config_source, field=key) from None
        return loaded[ident]

    prep = Prepared(traces, {}, {}, selection=select_traces(
        cfg, [t.id for t in every], [t.question for t in every], every))
    for label, spec in cfg["checkpoints"].items():
        ckpt = prep.checkpoints[label] = load(f"checkpoints.{label}", spec, label)
        prep.templates[label] = template_of(cfg, ckpt, config_source)
    if cfg["infogain"]["enabled"] and cfg["infogain"]["scorer"] != "self":
        prep.scorer = load("infogain.scorer", cfg["infogain"]["scorer"], "scorer")
    first, *others = prep.checkpoints
    patched = [t for t in traces if t.id in prep.selection.patch]
    generate = cfg["data"]["traces"] == "generate"

    def text(t: Trace, label: str) -> Any:
        ckpt = prep.checkpoints[label]
        return prep.templates[label].render(t.question, () if generate else t.steps,
                                            tokenizer=ckpt.tokenizer)

    for label in others if cfg["patching"]["enabled"] else ():
        try:
            check_same_tokenizer(prep.checkpoints[first], prep.checkpoints[label],
                                 [(t.id, text(t, first), text(t, label)) for t in patched])
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=config_source,
                                  field=f"checkpoints.{label}") from None
    source = cfg["data"]["path"] if cfg["data"]["source"] == "jsonl" else config_source
    generate = cfg["data"]["traces"] == "generate"
    paraphrase = "paraphrase" in probe_cfg.interventions
    fits = [(label, ckpt, prep.templates[label], paraphrase)
            for label, ckpt in prep.checkpoints.items()]
    if prep.scorer is not None:
        fits.append(("infogain.scorer", prep.scorer, prep.scorer.template, False))
    for label, ckpt, template, para in fits:
        longest = check_fit(traces, ckpt.tokenizer, template, ckpt.n_ctx, source=source,
                            label=f"{label} ({ckpt.spec})", generate=generate, paraphrases=para)
        prep.context[label] = {"max_prompt_tokens": longest, "n_ctx": ckpt.n_ctx}
    special: dict[str, None] = {}  # ids of traces holding special-token text, in order
    for label, ckpt, template, para in fits:
        special.update(dict.fromkeys(check_texts(
            traces, ckpt.tokenizer, template, mode=cfg["data"]["special_tokens"],
            source=source, label=f"{label} ({ckpt.spec})", generate=generate,
            paraphrases=para)))
    if cfg["unlearn"]["enabled"]:
        check_unlearn_inputs(cfg, prep.checkpoints, prep.selection, config_source)
    if cfg["cue"]["enabled"]:
        check_cue_inputs(cfg, traces, prep.selection, [f[:3] for f in fits[:len(
            prep.checkpoints)]], source=source, config_source=config_source)
    if cfg.get("abstain", {}).get("enabled"):
        check_abstain_inputs(cfg, traces, prep.selection, [f[:3] for f in fits[:len(
            prep.checkpoints)]], source=source, config_source=config_source)
    prep.warnings = warnings_entry({**trace_warnings(traces),
                                    **({"special_token_text": list(special)} if special else {})})
    prep.device_map_ignored = list(dict.fromkeys(ignored))
    if prep.device_map_ignored:  # said as doubtful data is: the run is not where it was asked
        prep.warnings["device_map_ignored"] = {"count": len(prep.device_map_ignored),
                                               "checkpoints": prep.device_map_ignored}
    prep.inputs = {"faithprobe": package_version(), "traces": trace_print,
                   "checkpoints": {label: checkpoint_fingerprint(ckpt)
                                   for label, ckpt in prep.checkpoints.items()},
                   "roles": {"scorer": checkpoint_fingerprint(prep.scorer)}
                   if prep.scorer is not None else {}, "generated": {}}
    return prep


def trace_texts(t: Trace, *, generate: bool = False, paraphrases: bool = True
                ) -> list[tuple[str, str]]:
    """Every text of a trace that its prompts hold, by field (as ``check_fit`` renders them:
    the answer as scored, no steps when the checkpoints write their own)."""
    from faithprobe.models.scoring import normalize_answer

    steps = () if generate else t.steps
    out = [("question", t.question), *((f"steps[{i}]", x) for i, x in enumerate(steps))]
    if t.options:
        out += [(f"options[{i}]", x) for i, x in enumerate(t.options)]
    elif not generate:
        out.append(("answer", normalize_answer(t.answer) or t.answer))
    if paraphrases and steps and t.paraphrases:
        out += [(f"paraphrases[{i}]", x) for i, x in enumerate(t.paraphrases)]
    return out


def check_texts(traces: Sequence[Trace], tokenizer: Any, template: Any, *, mode: str,
                source: str, label: str, generate: bool = False,
                paraphrases: bool = True) -> list[str]:
    """Every text of every trace encodes as the text it is: a piece the tokenizer maps only to
    its unknown or pad token (or to a special token even as text) is refused, naming the
    field. Returns the ids of the traces holding a special token's text (the tokenizer's, and
    ``<think>``, ``</think>`` in a thinking template), which ``mode`` ``refuse`` refuses."""
    from faithprobe.data.prompts import THINK_CLOSE, THINK_OPEN

    specials = [*tokenizer.special_strings, *((THINK_OPEN, THINK_CLOSE) if template.thinking
                                              else ())]
    found = []
    for t in traces:
        for name, text in trace_texts(t, generate=generate, paraphrases=paraphrases):
            bad = tokenizer.unencodable(text)
            if bad is not None:
                raise FaithprobeError(f"trace {t.id!r} with checkpoint {label}: {bad[1]!r} at "
                                      f"offset {bad[0]} becomes {bad[2]}", source=source,
                                      field=name)
            held = min(((text.find(s), s) for s in specials if s in text),
                       default=(0, None))[1]  # the first in the text
            if held is not None and mode == "refuse":
                raise FaithprobeError(
                    f"trace {t.id!r} with checkpoint {label}: holds {held!r}, the text of a "
                    f"special token (data.special_tokens = \"refuse\"; \"as_text\" encodes it "
                    "as plain text)", source=source, field=name)
            if held is not None and (not found or found[-1] != t.id):
                found.append(t.id)
    return found


def hardware(prep: Prepared) -> dict[str, Any]:
    """Where each checkpoint ran: its device and dtype, the GPU's name and memory, torch's
    and CUDA's versions, the CPU threads."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "threads": torch.get_num_threads(), "checkpoints": {}, "roles": {}}
    ignored = {"device_map": "auto, ignored: no CUDA GPU on this machine"}
    for label, ckpt in prep.checkpoints.items():
        out["checkpoints"][label] = {**checkpoint_hardware(ckpt), **(
            ignored if label in prep.device_map_ignored else {})}
    if prep.scorer is not None:  # a role, never a label (labels may not be "scorer")
        out["roles"]["scorer"] = {**checkpoint_hardware(prep.scorer), **(
            ignored if "scorer" in prep.device_map_ignored else {})}
    return out


def check_cue_inputs(cfg: RunConfig, traces: Sequence[Trace], selection: Selection,
                     fits: Sequence[tuple[str, Any, Any]], *, source: str,
                     config_source: str) -> None:
    """The preflight of the cue test: every tested trace can be cued by every kind (a free-form
    answer is a number, a replacing kind finds its place) and every cued prompt, with the
    longest target and examples it can get, renders, tokenizes and fits each checkpoint's
    context (``fits``: label, checkpoint, template). Errors name the kind's key."""
    from dataclasses import replace

    from faithprobe.edits.cues import choose_target
    from faithprobe.run.units import cue_kinds
    from faithprobe.stages.cue import cue_problem

    tested = [t for t in traces if t.id in selection.cue]
    kinds = cue_kinds(cfg)
    for i, kind in enumerate(kinds):
        where = f"cue.kinds[{i}]"
        problems = []
        for t in tested:
            try:
                if t.options:
                    target = max(t.options, key=len)
                else:
                    target = choose_target(t, kind.name, None, seed=cfg["seed"])
                    if target is None:
                        continue
                    target = "-" * target.startswith("-") + "9" * len(target.lstrip("-"))
                problems.append(cue_problem(t, kind, target, selection.cue_examples,
                                            seed=cfg["seed"])[0])
            except FaithprobeError as exc:
                raise FaithprobeError(f"cue kind {kind.name!r}, trace {t.id!r}: {exc.message}"
                                      f" ({exc.field})", source=config_source,
                                      field=where) from None
        for label, ckpt, template in fits:
            try:
                check_fit([replace(p, answer=p.options[0] if p.options else "0")
                           for p in problems], ckpt.tokenizer, template, ckpt.n_ctx,
                          source=source, label=f"{label} ({ckpt.spec})", generate=True,
                          paraphrases=False)
            except FaithprobeError as exc:
                raise FaithprobeError(f"cue kind {kind.name!r}: {exc.message}",
                                      source=config_source, field=where) from None


def check_unlearn_inputs(cfg: RunConfig, checkpoints: dict[str, Any], selection: Selection,
                         config_source: str) -> None:
    """The preflight of unlearning: the run has a trace to unlearn beside the ones it keeps,
    and every checkpoint can take gradients on the weights ``unlearn.params`` names (a
    quantized or frozen one is refused, naming the weight)."""
    from faithprobe.models.unlearning import gradient_problem, select_params

    if cfg["unlearn"]["retain_traces"] and len(selection.unlearn_pool) < 2:
        raise FaithprobeError("unlearning needs at least two traces outside the control set "
                              "(one unlearned, one whose text the KL term keeps)",
                              source=config_source, field="unlearn.retain_traces")
    for label, ckpt in checkpoints.items():
        try:
            params = select_params(ckpt.bridge, cfg["unlearn"]["params"])
        except FaithprobeError as exc:
            raise FaithprobeError(f"{exc.message} (checkpoint {label})", source=config_source,
                                  field=exc.field) from None
        problem = gradient_problem(ckpt.bridge, params)
        if problem is not None:
            raise FaithprobeError(f"cannot unlearn: {problem}", source=config_source,
                                  field=f"checkpoints.{label}")


def check_abstain_inputs(cfg: RunConfig, traces: Sequence[Trace], selection: Selection,
                         fits: Sequence[tuple[str, Any, Any]], *, source: str,
                         config_source: str) -> None:
    """The preflight of the abstention test: both questions of every asked trace that has a
    twin, with the declining answer offered, render, tokenize and fit each checkpoint's context
    (an instruction the tokenizer cannot encode ends here, naming ``[abstain]``)."""
    from faithprobe.data.unanswerable import unanswerable_variant
    from faithprobe.stages.abstain import asked_pair

    a = cfg["abstain"]
    problems: list[Trace] = []
    for t in traces:
        twin = unanswerable_variant(t) if t.id in selection.abstain else None
        if twin is not None:
            problems += asked_pair(t, twin, a["answer"], a["instruction"])
    for label, ckpt, template in fits:
        try:
            check_fit(problems, ckpt.tokenizer, template, ckpt.n_ctx, source=source,
                      label=f"{label} ({ckpt.spec})", generate=True, paraphrases=False)
        except FaithprobeError as exc:
            raise FaithprobeError(f"the abstention test's questions: {exc.message}",
                                  source=config_source, field="abstain") from None
