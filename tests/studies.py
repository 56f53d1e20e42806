"""Pieces of the small study configs the tests write: the text suite cut to truncation, every
other stage off, a few bootstrap replicates (a test adds the section it is about)."""

ONLY_TRUNCATION = """[probe]
interventions = ["truncate"]
[infogain]
enabled = false
[ki]
enabled = false
[patching]
enabled = false
"""
