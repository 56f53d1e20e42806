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
    raise AttributeError(f"module 'faithprobe' has no attribute {name!r}")
