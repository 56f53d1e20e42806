"""The model organisms: a planted task and its checkpoints (a plugin).

The task's corrupter and paraphraser are registered lazily by ``faithprobe.edits``; importing
this package registers nothing.
"""
