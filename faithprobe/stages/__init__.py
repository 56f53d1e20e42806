"""The model stage: runs edits and patching on a checkpoint, writes records."""
