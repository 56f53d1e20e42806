"""A run: its config and its folder."""
