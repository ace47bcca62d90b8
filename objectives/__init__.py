"""Declarative presets shipped with lpsd-search (data, not code)."""
