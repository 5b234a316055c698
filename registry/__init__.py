"""Corral registry (being built)."""

__all__: list[str] = []
