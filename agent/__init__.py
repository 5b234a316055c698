"""Corral agent (being built)."""

__all__: list[str] = []
