"""Stage 6: plots and the report."""
