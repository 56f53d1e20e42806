"""Stage 1: traces, prompt templates, tokenizers and alignment, trace sources."""
