"""Corral's benchmarks: each figure measured against a baseline in the same run.

``scripts/bench [NAME ...]`` runs the named benchmarks (all by default), prints
a table and writes ``bench-results.json``: a list of objects with ``name``,
``value``, ``unit``, ``baseline`` (what the value was measured against, in the
same run), ``ratio``, ``goal`` and ``machine``. A figure with a goal is a ratio
with a direction; there are no timed assertions in the test suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ lives in scripts/; some benchmarks reuse test fixtures (tests/).
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
from benchmarks.common import Figure  # noqa: E402 (scripts/ is on sys.path only now)

console = Console()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu} {os.cpu_count()} cores, Python {platform.python_version()}"


def _collect() -> tuple[dict[str, Callable[[Path], list[Figure]]], set[str]]:
    """Every ``BENCHMARKS`` table of the modules in ``scripts/benchmarks/``, and the
    names their ``ONLY_WHEN_NAMED`` sets keep out of a run of all (long soaks)."""
    found: dict[str, Callable[[Path], list[Figure]]] = {}
    named_only: set[str] = set()
    for path in sorted((ROOT / "scripts" / "benchmarks").glob("[a-z]*.py")):
        if path.stem == "common":
            continue
        module = importlib.import_module(f"benchmarks.{path.stem}")
        found.update(getattr(module, "BENCHMARKS", {}))
        named_only |= set(getattr(module, "ONLY_WHEN_NAMED", ()))
    return found, named_only


def main() -> int:
    benchmarks, named_only = _collect()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks (default all): {list(benchmarks)}")
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        console.print(f"[red]unknown benchmark(s) {unknown}[/red]; known: {list(benchmarks)}")
        return 2
    machine = _machine()
    figures: list[Figure] = []
    for name in args.names or [n for n in benchmarks if n not in named_only]:
        with console.status(f"running {name}"), tempfile.TemporaryDirectory() as tmp:
            for figure in benchmarks[name](Path(tmp)):
                figure.machine = machine
                figures.append(figure)
    table = Table(title=f"Benchmarks on {machine}")
    for column in ("name", "value", "unit", "goal", "baseline"):
        table.add_column(column, overflow="fold")
    for f in figures:
        table.add_row(f.name, f"{f.value:g}", f.unit, f.goal or "-", f.baseline or "-")
    console.print(table)
    Path(args.out).write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
