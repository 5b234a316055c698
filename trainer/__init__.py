"""Corral trainer (being built)."""

__all__: list[str] = []
