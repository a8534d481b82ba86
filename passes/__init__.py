"""Graph passes: one per module (pattern drawn in the docstring, guards, rewrite)."""
