"""Stage 5: metrics over records, with bootstrap intervals."""
