"""A model card for the terminal: the short, readable face of a version's audit document.

``corral model card NAME@VERSION`` prints :func:`render_card` of what
``GET /api/v1/models/{name}/{version}/audit`` answers (``registry.modelcard``
says what the document holds): the scores, where the version came from, its
aliases and their moves, approvals, rollouts, and the devices that ran it.
Long lists are cut to their newest rows; ``corral model audit`` writes the
whole document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["MAX_ROWS", "parse_ref", "render_card"]

#: Most rows a list shows on the card; the audit document has them all.
MAX_ROWS = 20


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` as ``(name, version)``.

    Raises:
        ValueError: not of that form.
    """
    name, _, version = ref.partition("@")
    if not name or not version:
        raise ValueError(f"{ref!r} should be NAME@VERSION, e.g. animals@1.2.0")
    return name, version


def _num(value: Any, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format(value, spec)


def _percent(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{100 * value:.1f} %"


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else "-"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table of the newest :data:`MAX_ROWS` rows (the input is oldest first)."""
    shown = rows[-MAX_ROWS:]
    cut = len(rows) - len(shown)
    table = Table(
        title=title, title_justify="left", caption=f"{cut} older not shown" if cut else None
    )
    for column in columns:
        table.add_column(column)
    for row in shown:
        table.add_row(*row)
    return table


def _scores(metrics: dict[str, Any]) -> list[RenderableType]:
    split, samples = metrics.get("split", "test"), metrics.get("samples")
    head = Text.assemble(
        (f"Scores ({split} split", "bold"),
        (f", {samples} samples" if samples is not None else "", "bold"),
        ("): ", "bold"),
        f"accuracy {_percent(metrics.get('accuracy'))}, ",
        f"macro F1 {_num(metrics.get('macro_f1'), '.3f')}, ",
        f"recall gap (bias) {_num(metrics.get('recall_gap'), '.3f')}, ",
        f"ECE {_num(metrics.get('expected_calibration_error'), '.3f')}",
    )
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        return [head]
    rows = [
        (
            str(label),
            _num(m.get("precision"), ".3f"),
            _num(m.get("recall"), ".3f"),
            _num(m.get("f1"), ".3f"),
            _num(m.get("support"), "d"),
        )
        for label, m in per_class.items()
        if isinstance(m, dict)
    ]
    return [head, _table("Per class", ("class", "precision", "recall", "F1", "support"), rows)]


def _origin(origin: dict[str, Any]) -> Text:
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(origin["code_dirty"], "")
    parent = "-"
    if origin["parent_version"]:
        parent = f"{origin['parent_name']}@{origin['parent_version']}"
        parent += "" if origin["parent_registered"] else " (not in this registry)"
    trials = origin["search_trials"]
    return Text.assemble(
        ("Origin: ", "bold"),
        f"dataset {_short(origin['dataset_version'])} ",
        f"(manifest {_short(origin['dataset_manifest_sha256'])}), ",
        f"code {_short(origin['code_commit'])}{dirty}, ",
        f"trainer {origin['trainer_version'] or '-'}, ",
        f"search {f'{trials} trials' if trials else 'none'}, ",
        f"parent {parent}",
    )


def render_card(audit: dict[str, Any]) -> Group:
    """The card of one audit document (the ``corral.model-audit/1`` format).

    Raises:
        KeyError: the document lacks a section of that format.
    """
    bundle, aliases = audit["bundle"], audit["aliases"]
    parts: list[RenderableType] = [
        Text.assemble(
            (f"{bundle['name']} {bundle['version']}", "bold"),
            f"  created {bundle['created'] or '-'}, registered {bundle['registered_at']}, ",
            f"bundle.json sha256 {_short(bundle['bundle_sha256'])}, ",
            f"variants {', '.join(bundle['variants']) or '-'}",
        ),
        *_scores(audit["metrics"]),
        _origin(audit["origin"]),
        Text.assemble(
            ("Aliases now: ", "bold"),
            ", ".join(
                f"{a['alias']} (since {a['moved_at']}, by {a['moved_by']})"
                for a in aliases["current"]
            )
            or "none",
        ),
    ]
    if aliases["moves"]:
        moves = [
            (
                m["moved_at"],
                m["alias"],
                m["from_version"] or "-",
                m["to_version"],
                m["moved_by"],
                m["reason"],
            )
            for m in aliases["moves"]
        ]
        parts.append(_table("Alias moves", ("when", "alias", "from", "to", "who", "why"), moves))
    if audit["approvals"]:
        approvals = [
            (
                a["at"],
                f"#{a['rollout_id']} {a['environment']}",
                a["actor"],
                a["note"] or a["message"],
            )
            for a in audit["approvals"]
        ]
        parts.append(_table("Approvals", ("when", "rollout", "who", "note"), approvals))
    if audit["rollouts"]:
        rollouts = [
            (
                f"#{r['id']}",
                r["environment"],
                r["state"],
                str(r["devices"]),
                r["created_by"],
                r["created_at"],
                r["finished_at"] or "-",
                r["reason"] or "",
            )
            for r in audit["rollouts"]
        ]
        columns = ("rollout", "env", "state", "devices", "by", "started", "finished", "reason")
        parts.append(_table("Rollouts", columns, rollouts))
    devices = audit["devices"]
    if devices:
        ran = [
            (
                d["device_id"],
                d["first_seen"] or "-",
                d["last_seen"] or "-",
                "yes" if d["runs_now"] else f"no ({d['version'] or '-'})",
                "exact" if d["exact"] else "from buckets",
            )
            for d in devices
        ]
        heads = ("device", "first seen", "last seen", "runs it now", "times")
        parts.append(_table(f"Devices that ran it ({len(devices)})", heads, ran))
    else:
        parts.append(Text("No device has reported running it."))
    events = audit["device_events"]["total"]
    parts.append(
        Text(
            f"{events} device event(s) and {len(audit['audit'])} audit-log entries name it; "
            f"`corral model audit {bundle['name']}@{bundle['version']}` writes them all."
        )
    )
    return Group(*parts)
