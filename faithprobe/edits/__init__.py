"""Stage 3a: text interventions (edits of a trace's reasoning steps).

``interventions``: :class:`Edit`, :class:`EditContext`, the registries and ``make_intervention``;
``kinds``: the built-in interventions; ``corrupters``: the built-in corrupters and paraphrasers.
"""
