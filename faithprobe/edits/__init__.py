"""Stage 3a: text interventions (edits of a trace's reasoning steps)."""
