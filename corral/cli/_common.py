"""What every command group shares: the console, the registry seam and the error exit.

Each command opens one :class:`~corral.client.RegistryClient` with
:func:`registry_client`, which turns any :class:`~corral.errors.CorralError`
into a one-line ``error: ...`` and exit code 2, so no command prints a
traceback for a refusal, a bad reference or a registry that is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.client import RegistryClient

__all__ = ["Registry", "Token", "console", "fail", "fmt", "registry_client"]

console = Console()

Registry = Annotated[
    str | None, typer.Option("--registry", envvar="CORRAL_REGISTRY", help="Registry URL.")
]
Token = Annotated[str | None, typer.Option("--token", envvar="CORRAL_TOKEN", help="API token.")]


@contextmanager
def registry_client(registry: str | None, token: str | None) -> Iterator[RegistryClient]:
    """A client for one command; a CorralError becomes a one-line error and exit code 2.

    Args:
        registry: The registry URL (``--registry`` or ``CORRAL_REGISTRY``).
        token: The API token (``--token`` or ``CORRAL_TOKEN``).

    Returns:
        A context manager that yields an open client and closes it after.

    Raises:
        typer.Exit: With code 2 for any CorralError raised by the client or in the block.
    """
    # Looked up on the package at call time, not bound here: tests hand the whole CLI
    # a fake registry by setting ``corral.cli.RegistryClient`` (tests/gpu).
    from corral import cli

    try:
        with cli.RegistryClient(registry, token) as client:
            yield client
    except CorralError as e:
        raise fail(e) from e


def fail(error: Exception) -> typer.Exit:
    """Print ``error: ...`` in red and return the exit (code 2) for the caller to raise.

    Args:
        error: What went wrong; its text is the message.

    Returns:
        ``typer.Exit(2)``; returned rather than raised so callers can chain ``from e``.

    Raises:
        Nothing.
    """
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec`` for a table cell, or ``-`` when it is None.

    Raises:
        ValueError: If ``spec`` does not suit the value.
    """
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)
