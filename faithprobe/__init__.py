"""faithprobe: after fine-tuning, does a model's chain of thought still carry its answer?

The flow: traces -> checkpoints -> interventions -> records -> metrics -> report.
"""

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.traces import Trace, read_traces, split_steps, trace_from_text, write_traces
from faithprobe.errors import FaithprobeError
from faithprobe.records import Record, read_records

__all__ = [
    "FaithprobeError",
    "PromptTemplate",
    "Record",
    "Trace",
    "load_checkpoint",
    "load_run",
    "read_records",
    "read_traces",
    "split_steps",
    "trace_from_text",
    "write_traces",
]


def __getattr__(name: str):
    # torch and TransformerLens load only when a model is needed (fast `faithprobe --help`).
    if name == "load_checkpoint":
        from faithprobe.models.checkpoints import load_checkpoint

        return load_checkpoint
    if name == "load_run":  # a run folder as pandas DataFrames (pandas imported when called)
        from faithprobe.notebook import load_run

        return load_run
    raise AttributeError(f"module 'faithprobe' has no attribute {name!r}")
