"""The run config schema: one pydantic model per TOML section, the one statement of each key.

Each field states its type, default, choices (a ``Literal``, or a registry read when a config is
validated) and bounds (``Field(ge=, le=)``), with a description that README's "Run configs"
table is generated from (:mod:`faithprobe.run.schema_doc`; a test fails when the README
differs). Every model forbids unknown keys and is
strict: TOML ``1`` is not a boolean, ``true`` is not an integer; an integer is taken where a
number belongs (as a float). :func:`faithprobe.run.config.validate_config` turns the first
error into a one-line ``FaithprobeError`` naming the key path.

A default of ``None`` means "not set": the key is absent from the validated config unless given
(an intervention's options take its own defaults, ``[ray]`` its own sizing).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from faithprobe.data.traces import SplitMode
from faithprobe.edits.cues import CUES, CueKind
from faithprobe.edits.interventions import (
    CORRUPTERS,
    INTERVENTIONS,
    PARAPHRASERS,
    Continuation,
)
from faithprobe.edits.kinds import FillerScope
from faithprobe.errors import FaithprobeError
from faithprobe.judges import JUDGES
from faithprobe.run.schema_base import (
    MAX_LABEL_CHARS,
    MAX_SEED,
    MAX_STRING_CHARS,
    REGISTRIES,
    Scalar,
    Section,
    Text,
    bounds_of,
    config_error,
    registered,
    seed_field,
)
from faithprobe.run.schema_stages import AbstainSection, UnlearnSection

__all__ = ["MAX_LABEL_CHARS", "MAX_SEED", "MAX_STRING_CHARS", "REGISTRIES", "AbstainSection",
           "CorruptOptions",
           "CueSection", "CustomCue", "DataSection", "FillerOptions", "GenerationSection",
           "InfogainSection", "KiSection", "MetricsSection", "ParaphraseOptions",
           "PatchingSection", "PlacementSection", "ProbeSection", "RaySection", "ResampleSection",
           "RunSchema", "Section", "TemplateSection", "UnlearnSection", "bounds_of", "config_error",
           "registered"]

# --- [data], [generation], [template] --------------------------------------------------------

class DataSection(Section):
    """where the traces come from:"""

    source: Literal["organism", "jsonl", "reasoning_gym"] = Field(
        "organism", description="the trace source")
    path: Text = Field(None, description="jsonl: the trace file, relative to the config file")
    split: Literal["id", "ood"] = Field(
        "id", description="organism: in or out of the training distribution")
    task: Text = Field(None, description="reasoning_gym: the task, e.g. `basic_arithmetic`, "
                                         "`gsm_symbolic`")
    task_options: dict[str, Scalar] = Field(
        None, description="reasoning_gym: the task's own config fields")
    count: int = Field(None, ge=1, le=100_000, description="how many problems")
    seed: int = seed_field(0, "the data seed")
    traces: Literal["file", "generate"] = Field(
        "file", description="`file`: the traces as given; `generate`: each checkpoint writes "
                            "its own")
    special_tokens: Literal["as_text", "refuse"] = Field(
        "as_text", description="a question, step, answer or option holding a tokenizer's "
                               "special-token text (`<|im_end|>`): `as_text` encodes it as plain "
                               "text, `refuse` stops the run before it starts; counted in the "
                               "header's warnings either way")

    @model_validator(mode="after")
    def _source_needs(self) -> DataSection:
        if self.source == "jsonl" and self.path is None:
            raise FaithprobeError("source jsonl needs a path", field="data.path")
        if self.source == "reasoning_gym" and self.task is None:
            raise FaithprobeError("source reasoning_gym needs a task", field="data.task")
        return self


class GenerationSection(Section):
    """generating a checkpoint's own traces (`data.traces = "generate"`):"""

    max_new_tokens: int = Field(256, ge=1, le=65_536,
                                description="length limit of a generated chain of thought")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 = greedy")
    split: SplitMode = Field("auto", description="how generated text becomes steps")
    max_steps: int = Field(12, ge=1, le=10_000,
                           description="keep at most this many steps of a generated trace")
    drop_truncated: bool = Field(False, description="leave out of the probe the generations "
                                 "cut by max_new_tokens (they stay in the saved traces)")


class TemplateSection(Section):
    """overrides of the checkpoint's prompt template:"""

    question_prefix: Text = Field(None, description="before the question")
    reasoning_prefix: Text = Field(None, description="before the reasoning")
    step_prefix: Text = Field(None, description="before each step")
    step_sep: Text = Field(None, description="between steps")
    suffix: Text = Field(None, description="after the reasoning, before the answer")
    answer_sep: Text = Field(None, description="between the suffix and the answer")
    chat: bool = Field(None, description="render through the tokenizer's chat template")
    thinking: bool = Field(None, description="reasoning inside <think> ... </think>")
    system: Text = Field(None, description="the chat's system message")


# --- [probe] and its interventions' options --------------------------------------------------

class CorruptOptions(Section):
    """`[probe.corrupt]`"""

    corrupter: Text = Field(None, description="a registered corrupter; unset: `auto`",
                            json_schema_extra={"choices": "corrupter"})
    continuations: list[Continuation] = Field(
        None, description="what follows the corrupted step; unset: both")
    keep_length: bool = Field(None, description="only corruptions of the same token length; "
                                                "unset: true")
    tries: int = Field(None, ge=1, le=1_000, description="draws of a same-length corruption")

    @model_validator(mode="after")
    def _known_corrupter(self) -> CorruptOptions:  # its path is [probe.corrupt], as always
        if self.corrupter is not None:
            registered(CORRUPTERS)(self.corrupter)
        return self


class ParaphraseOptions(Section):
    """`[probe.paraphrase]`"""

    source: Text = Field(
        None, description="`auto`, when unset: the trace's `paraphrases`, else the rule "
                          "registered for its `metadata.task`; `equations` says `3 * 4 = 12` as "
                          "`3 times 4 is 12`",
        json_schema_extra={"choices": "paraphraser", "also": ["auto"]})

    @model_validator(mode="after")
    def _known_paraphraser(self) -> ParaphraseOptions:
        if self.source is not None:
            registered(PARAPHRASERS, also=("auto",))(self.source)
        return self


class FillerOptions(Section):
    """`[probe.filler]`"""

    scope: list[FillerScope] = Field(None, description="the whole reasoning, or each step; "
                                                        "unset: `all`")
    unit: Text = Field(None, description='the filler text repeated; unset: `" ..."`')


class ProbeSection(Section):
    """the text interventions:"""

    interventions: list[Annotated[Text, AfterValidator(registered(INTERVENTIONS))]] = Field(
        ["truncate", "corrupt", "paraphrase", "filler", "delete"],
        description="registered interventions, yours too: see `register_intervention`")
    max_new_tokens: int = Field(48, ge=1, le=65_536,
                                description="regeneration budget after a corrupted step")
    batch_size: int = Field(16, ge=1, le=4_096, description="rows scored together")
    padding_side: Literal["left", "right"] = Field("right", description="where a batch pads")
    max_batch_tokens: int = Field(None, ge=1, le=10**9,
                                  description="a batch's padded size, rows x longest row, at "
                                              "most this")
    corrupt: CorruptOptions = Field(None, description="options of `corrupt`")
    paraphrase: ParaphraseOptions = Field(None, description="options of `paraphrase`")
    filler: FillerOptions = Field(None, description="options of `filler`")


# --- the methods ------------------------------------------------------------------------------

class InfogainSection(Section):
    """information gain of each step:"""

    enabled: bool = Field(True, description="score it")
    scorer: Text = Field("self", description="`self` or a fixed checkpoint spec: the same "
                                             "ruler for every checkpoint")
    ppl: bool = Field(True, description="also the whole-string perplexity form")


class KiSection(Section):
    """key-information steps:"""

    enabled: bool = Field(True, description="exact from `step_truth`; a judge callable "
                                            "through the Python API")


class PatchingSection(Section):
    """activation patching of each step:"""

    enabled: bool = Field(True, description="patch")
    components: list[Literal["resid_pre", "attn_out", "mlp_out"]] = Field(
        ["resid_pre", "attn_out", "mlp_out"], description="what is patched")
    directions: list[Literal["noising", "denoising"]] = Field(
        ["noising"], description="noising: the corrupted step into the clean run")
    max_traces: int = Field(20, ge=1, le=100_000,
                            description="patch at most this many traces per checkpoint")
    knockout: bool = Field(True, description="attention knockout of each step")
    method: Literal["exact", "attribution", "both"] = Field(
        "exact", description="attribution: the gradient estimate")
    corrupted: Literal["each", "all"] = Field(
        "each", description="each: a step's cells patched from that step alone corrupted; all: "
                            "from every step corrupted at once; see [Activation patching]"
                            "(#activation-patching)")
    suppression: bool = Field(
        False, description="the step x step suppression matrix and receiver heads, S + 1 passes; "
                           "see [The suppression matrix and receiver heads]"
                           "(#the-suppression-matrix-and-receiver-heads)")
    suppression_temperature: float = Field(
        1.0, ge=0.01, le=100.0,
        description="the suppression KL's softmax temperature; Thought Anchors use 0.6")


class ResampleSection(Section):
    """counterfactual resampling (see [Resampling](#resampling)):"""

    enabled: bool = Field(False, description="resample")
    samples: int = Field(8, ge=2, le=10_000, description="K rollouts from each prefix")
    temperature: float = Field(0.6, ge=0.01, le=100.0, description="a rollout's sampling")
    top_p: float = Field(0.95, ge=0.01, le=1.0, description="a rollout's nucleus")
    max_new_tokens: int = Field(256, ge=1, le=65_536,
                                description="a rollout's budget: the rest of the reasoning")
    different: Literal["any", "text", "numbers", "cosine"] = Field(
        "text", description="when a resampled step counts as different")
    threshold: float = Field(0.8, ge=-1.0, le=1.0, description="cosine: different below this "
                                                               "similarity of hidden states")
    batch_size: int = Field(64, ge=1, le=4_096, description="rollouts generated together")
    max_traces: int = Field(20, ge=1, le=100_000,
                            description="resample at most this many traces per checkpoint")


class CustomCue(Section):
    """`[cue.custom.<name>]`"""

    stores_defaults: ClassVar[bool] = False  # stored as given; read through this model

    template: Text = Field(description="text holding `{target}`",
                           json_schema_extra={"missing": "a custom cue kind needs a template "
                                                         "holding {target}"})
    position: Literal["before", "after"] = Field("before", description="of the question")
    mentions: list[Text] = Field([], description="words that count as mentioning it")

    @field_validator("template")
    @classmethod
    def _holds_target(cls, template: str) -> str:
        try:  # the cue kind's own check: {target} present, no other placeholder
            CueKind("custom", template)
        except FaithprobeError as exc:
            raise config_error(exc.message) from None
        return template


class CueSection(Section):
    """cue tests (see [Cue tests](#cue-tests)):"""

    enabled: bool = Field(False, description="test")
    kinds: list[Text] = Field(
        ["sycophancy", "metadata", "few_shot"],
        description="registered cue kinds, see `register_cue`, or `[cue.custom]` names",
        json_schema_extra={"choices": "cue kind"})
    max_new_tokens: int = Field(256, ge=1, le=65_536,
                                description="the budget of each reasoning, uncued and cued")
    max_traces: int = Field(100_000, ge=1, le=100_000,
                            description="test at most this many traces per checkpoint")
    judge: Annotated[Text, AfterValidator(registered(JUDGES))] = Field(
        "rule", description="who decides whether cued reasoning mentions the cue")
    custom: dict[str, CustomCue] = Field({}, description="cue kinds of your own, by name")

    @model_validator(mode="after")
    def _kinds_known(self) -> CueSection:
        for name in self.custom:
            if name in CUES:
                raise FaithprobeError(f"{name!r} is a built-in cue kind; name yours otherwise",
                                      field=f"cue.custom.{name}")
        if not self.kinds:
            raise FaithprobeError("name at least one cue kind", field="cue.kinds")
        for i, name in enumerate(self.kinds):
            if name not in CUES and name not in self.custom:
                known = ", ".join([*CUES.names(), *self.custom])
                raise FaithprobeError(f"unknown cue kind {name!r} (known: {known})",
                                      field=f"cue.kinds[{i}]")
            if name in self.kinds[:i]:
                raise FaithprobeError(f"cue kind {name!r} is named twice",
                                      field=f"cue.kinds[{i}]")
        return self


class MetricsSection(Section):
    """the summary:"""

    n_boot: int = Field(1000, ge=1, le=20_000, description="bootstrap replicates; 20,000 take "
                                                           "about 11 s for the demo's 60 traces")
    pairs: list[list[Text]] = Field(
        None, description='the comparisons, `[["base", "sft"], ["sft", "sft-v2"]]`: b against '
                          "a; default the first checkpoint against each other; the fine-tuning "
                          "question is asked of pairs whose a is the first checkpoint")


class RaySection(Section):
    """with `--engine ray` only (see [Sweeps on a Ray cluster](#sweeps-on-a-ray-cluster)):"""

    cpus_per_task: int = Field(None, ge=1, le=1_024,
                               description="CPUs a task asks for; its torch threads "
                                           "are the run's `threads`, as a local run's")
    gpus_per_task: float = Field(None, ge=0.0, le=64.0, description="GPUs a task of a "
                                                                    "checkpoint on a GPU asks for")
    traces_per_task: int = Field(None, ge=1, le=100_000, description="traces in one task; "
                                                                     "unset: about 4 tasks a CPU")


class PlacementSection(Section):
    """`[placement.<label>]`"""

    device: Text = Field(None, description="as the top level's")
    dtype: Text = Field(None, description="as the top level's")
    device_map: Text = Field(None, description="as the top level's")


class RunSchema(Section):
    """A whole run config (README, "Run configs")."""

    name: Text = Field("faithprobe run", description="shown in reports")
    seed: int = seed_field(0, "seeds corruption choices, sampling and bootstrap")
    checkpoints: dict[str, Text] = Field(
        description='label = spec, two or more for a comparison (`base = "organism:base"`, a '
                    "folder, `smollm2`...); `scorer` is reserved: the InfoGain scorer's role in "
                    "`[placement.scorer]` and the header",
        json_schema_extra={"missing": "missing section"})
    allow_pickle: bool = Field(False, description="let pickle checkpoints load, with "
                                                  "weights_only=True")
    device: Text = Field("cpu", description="every checkpoint's: `auto`, `cpu`, `cuda`, "
                                            "`cuda:N`, `mps`")
    dtype: Text = Field("float32", description="every checkpoint's: `float32`, `bfloat16`, "
                                               "`float16`, `auto`: the checkpoint's own")
    device_map: Text = Field(None, description="`auto`: accelerate spreads a model too large "
                                               "for one GPU; ignored without one")
    placement: dict[str, PlacementSection] = Field(
        {}, description="`device`, `dtype`, `device_map` of one checkpoint (label `scorer` for "
                        "the fixed InfoGain scorer)")
    threads: int = Field(None, ge=1, le=1_024,
                         description="torch CPU threads; unset: all cores but one")
    data: DataSection = Field(DataSection())
    generation: GenerationSection = Field(GenerationSection())
    template: TemplateSection = Field(TemplateSection())
    probe: ProbeSection = Field(ProbeSection())
    infogain: InfogainSection = Field(InfogainSection())
    ki: KiSection = Field(KiSection())
    patching: PatchingSection = Field(PatchingSection())
    resample: ResampleSection = Field(ResampleSection())
    cue: CueSection = Field(CueSection())
    unlearn: UnlearnSection = Field(UnlearnSection())
    abstain: AbstainSection = Field(AbstainSection())
    metrics: MetricsSection = Field(MetricsSection())
    ray: RaySection = Field(None)

    @field_validator("checkpoints")
    @classmethod
    def _labels(cls, checkpoints: dict[str, str]) -> dict[str, str]:
        if not checkpoints:
            raise FaithprobeError("name at least one checkpoint", field="checkpoints")
        for label in checkpoints:
            where = f"checkpoints.{label[:MAX_LABEL_CHARS]}"
            if not label.replace("-", "").replace("_", "").isalnum():
                raise FaithprobeError("a label is letters, digits, - and _", field=where)
            if len(label) > MAX_LABEL_CHARS:
                raise FaithprobeError(f"a label is at most {MAX_LABEL_CHARS} characters",
                                      field=where)
        return checkpoints
