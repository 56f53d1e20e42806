"""Stage 2: checkpoints, forward passes, answer scoring, trace generation."""
