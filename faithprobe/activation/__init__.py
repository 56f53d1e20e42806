"""Stage 3b: tensor-level activation patching (knows nothing of traces or records).

- :mod:`~faithprobe.activation.core`: hook names, the answer read-out, the patch result;
- :mod:`~faithprobe.activation.patching`: step-span patching, its self-check, answer positions;
- :mod:`~faithprobe.activation.fast`: the fast path (blocks run from the patched layer up);
- :mod:`~faithprobe.activation.knockout`: attention knockout and the attention baseline;
- :mod:`~faithprobe.activation.attribution`: attribution patching (a gradient estimate);
- :mod:`~faithprobe.activation.suppression`: the step x step suppression matrix, receiver heads.
"""

from faithprobe.activation.attribution import (
    attribution_correlation,
    attribution_patch_steps,
    pearson,
)
from faithprobe.activation.core import (
    COMPONENTS,
    MIN_CLEAN_LOGIT_DIFF,
    Answer,
    PatchResult,
    answer_metrics,
    hook_name,
)
from faithprobe.activation.knockout import KnockoutResult, attention_to_steps, knockout_steps
from faithprobe.activation.patching import (
    FastPath,
    check_fast_path,
    patch_answer_positions,
    patch_steps,
)
from faithprobe.activation.suppression import (
    SuppressionResult,
    suppress_steps,
    suppression_support,
    vertical_scores,
)

__all__ = [
    "COMPONENTS",
    "MIN_CLEAN_LOGIT_DIFF",
    "Answer",
    "FastPath",
    "KnockoutResult",
    "PatchResult",
    "SuppressionResult",
    "answer_metrics",
    "attention_to_steps",
    "attribution_correlation",
    "attribution_patch_steps",
    "check_fast_path",
    "hook_name",
    "knockout_steps",
    "patch_answer_positions",
    "patch_steps",
    "pearson",
    "suppress_steps",
    "suppression_support",
    "vertical_scores",
]
