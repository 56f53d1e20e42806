"""Stage 3b: tensor-level activation patching (knows nothing of traces or records)."""
