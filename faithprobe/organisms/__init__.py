"""The model organisms: a planted task and its checkpoints (a plugin)."""
