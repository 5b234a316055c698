"""Model versions and their aliases: push, list, audit, card, build-trt; alias set/history.

``build-trt`` is the one heavy command: it imports the trainer (and through it
TensorRT and onnxruntime-gpu) inside the command, so the rest of the CLI stays
light and a machine without the trainer extra is told what to install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from corral.card import parse_ref, render_card
from corral.cli._common import Registry, Token, console, fail, fmt, registry_client
from corral.errors import CorralError

__all__ = ["ModelRef", "alias_app", "model_app"]

model_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry.")
alias_app = typer.Typer(no_args_is_help=True, help="Model aliases: production, staging, champion.")


@alias_app.command("set")
def alias_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="production, staging or champion.")],
    version: Annotated[str, typer.Argument(help="The version it points to from now.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the alias history.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Point a model's alias at a version."""
    with registry_client(registry, token) as client:
        client.move_alias(model, alias, version, reason)
    console.print(f"{model} {alias} → {version}")


@alias_app.command("history")
def alias_history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="production, staging or champion.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Every move of a model's alias, newest first: who, when, from, to, why."""
    with registry_client(registry, token) as client:
        moves = client.alias_history(model, alias)
    table = Table(title=f"{model} {alias}")
    for column in ("when", "who", "from", "to", "why"):
        table.add_column(column)
    for m in moves:
        table.add_row(
            m["moved_at"], m["moved_by"], fmt(m["from_version"]), m["to_version"], m["reason"]
        )
    console.print(table)


@model_app.command("push")
def model_push(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory (bundle.json and files).")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Upload a bundle; the registry signs it and it becomes an immutable version."""
    with registry_client(registry, token) as client:
        created = client.push_model(bundle_dir)
    console.print(
        f"pushed {created['name']} {created['version']} ({len(created['files'])} files, signed)"
    )


@model_app.command("list")
def model_list(registry: Registry = None, token: Token = None) -> None:
    """List model versions with their test accuracy."""
    with registry_client(registry, token) as client:
        models = client.models()
    table = Table(title="Models")
    for column in ("name", "version", "created", "accuracy", "dataset"):
        table.add_column(column)
    for m in models:
        metrics = m.get("metrics") or {}
        lineage = m.get("lineage") or {}
        table.add_row(
            m["name"],
            m["version"],
            fmt(m.get("created")),
            fmt(metrics.get("accuracy"), ".4f"),
            fmt(lineage.get("dataset_version"))[:12],
        )
    console.print(table)


ModelRef = Annotated[str, typer.Argument(help="The version, NAME@VERSION.")]


def _audit(ref: str, registry: str | None, token: str | None) -> dict[str, Any]:
    try:
        name, version = parse_ref(ref)
    except ValueError as e:
        raise fail(e) from e
    with registry_client(registry, token) as client:
        return client.model_audit(name, version)


@model_app.command("audit")
def model_audit(
    ref: ModelRef,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here instead of stdout.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Write a version's audit document (JSON): where it came from, how it scored, who
    approved it, where it was rolled out, which devices ran it and when."""
    text = json.dumps(_audit(ref, registry, token), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise fail(CorralError(f"cannot write {out}: {e}")) from e
    console.print(f"wrote the audit of {ref} to {out}")


@model_app.command("card")
def model_card(ref: ModelRef, registry: Registry = None, token: Token = None) -> None:
    """Print a version's model card: scores, origin, aliases, approvals, rollouts, devices."""
    console.print(render_card(_audit(ref, registry, token)))


@model_app.command("build-trt")
def model_build_trt(
    ref: ModelRef,
    profile: Annotated[
        str, typer.Option("--profile", help="Firmware profile the engine is for (its batch size).")
    ],
    precision: Annotated[
        str | None,
        typer.Option(help="fp16 or int8 (see --calibration); default: the profile's."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="int8: calibrate on these images: a folder (<label>/<image> or flat), a "
            ".csv/.jsonl manifest (path, label) or a trainer's dataset.json; default: the "
            "bundle's golden samples, which parity is then measured on too."
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None,
        typer.Option(
            min=1, help="Calibrate on at most this many images, chosen by content hash [512]."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Publish even when parity with fp32 is outside the tolerance.")
    ] = False,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the fetched model, table and engine here.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Build a TensorRT engine of a version for this GPU and add it as a signed variant.

    Needs an NVIDIA GPU, TensorRT and onnxruntime-gpu with its TensorRT provider; without
    them it says what is missing and exits 2 having changed nothing. Parity with the fp32
    model is measured on the golden samples; outside the tolerance it exits 1 unless
    --force. Exit 2 also for a bad reference, profile or precision, a variant that exists,
    or --calibration data that is missing, empty or unusable (checked before any build).
    """
    import tempfile

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from corral.profiles import default_profiles_dir, load_profiles

    try:
        name, version = parse_ref(ref)
        profiles = load_profiles(default_profiles_dir())
        if profile not in profiles:
            raise CorralError(f"no firmware profile {profile!r}; known: {sorted(profiles)}")
    except (ValueError, CorralError) as e:
        raise fail(e) from e
    try:
        from trainer import trt
        from trainer.calibration import DEFAULT_SAMPLES, check_calibration_source, load_calibration
        from trainer.errors import TrainConfigError, TrainerError, VariantParityError
        from trainer.parity import check_variant_parity
    except ImportError as e:
        raise fail(
            CorralError(
                f"build-trt needs the trainer extra and onnxruntime-gpu ({e}); "
                "`pip install 'corral[trainer]' onnxruntime-gpu tensorrt`"
            )
        ) from e
    only_int8 = "--calibration applies to int8 only; pass --precision int8 or leave it out"
    try:
        # The calibration data's path before the GPU: a typo should not cost a probe.
        if calibration is not None:
            if precision is not None and precision != "int8":
                raise TrainConfigError(only_int8)
            check_calibration_source(calibration)
        info = trt.probe()
        chosen = trt.check_profile(profiles[profile], info, precision)
        if calibration is not None and chosen != "int8":
            raise TrainConfigError(f"{only_int8} (profile {profile} builds {chosen})")
    except TrainerError as e:
        raise fail(e) from e
    variant = trt.variant_name(chosen, info.gpu, info.tensorrt_version)
    console.print(
        f"building {variant} of {name} {version} on {info.gpu} "
        f"(TensorRT {info.tensorrt_version}, onnxruntime {info.onnxruntime_version})"
    )
    steps = {
        "fetch": "fetch the fp32 model",
        "read": f"read the calibration images in {calibration}",
        "calibrate": "calibrate int8 on "
        + ("the golden samples" if calibration is None else "the calibration images"),
        "build": "build the TensorRT engine",
        "parity": "compare with fp32 in ONNX Runtime",
        "publish": "publish and sign the variant",
    }
    with (
        tempfile.TemporaryDirectory(prefix="corral-trt-") as scratch,
        registry_client(registry, token) as client,
        Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress,
    ):
        work = work_dir or Path(scratch)
        current: list[Any] = []

        def finish() -> None:
            if current:
                progress.update(current[-1], completed=1, total=1)

        def step(key: str) -> None:
            finish()
            current.append(progress.add_task(steps[key], total=None))

        step("fetch")
        bundle = client.fetch_bundle(name, version, work / "bundle")
        if any(f.variant == variant for f in bundle.files):
            raise fail(CorralError(f"{name} {version} already has the {variant!r} variant"))
        data = None
        if calibration is not None:
            step("read")
            try:
                data = load_calibration(
                    calibration, bundle.input, calibration_samples or DEFAULT_SAMPLES
                )
            except TrainConfigError as e:
                progress.stop()
                raise fail(e) from e
            except TrainerError as e:
                progress.stop()
                console.print(f"[red]error:[/red] {e}")
                raise typer.Exit(1) from e
            skipped = ", ".join(f"{n} {k}" for k, n in sorted(data.report.problems.items()))
            progress.console.print(
                f"calibration: {len(data.hashes)} images of {data.report.listed} listed in "
                f"{calibration} ({data.report.skipped} skipped{': ' if skipped else ''}{skipped}; "
                f"{data.report.duplicates} repeated)"
            )
        try:
            built = trt.build_trt_variant(
                bundle,
                work / "bundle",
                profiles[profile],
                chosen,
                info,
                work / "build",
                step,
                calibration=data,
            )
        except TrainerError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from e
        table = Table(title=f"Parity of {variant} against fp32 (ONNX Runtime, CPU)")
        for column in ("samples", "max abs diff", "limit", "top-1 agreement", "needed", "result"):
            table.add_column(column)
        report = built.parity
        table.add_row(
            str(report.samples),
            f"{report.max_abs_diff:.4g}",
            f"{report.limit:.4g}",
            f"{100 * report.top1_agreement:.1f} %",
            f"{100 * report.tolerance.min_top1_agreement:.1f} %",
            "[green]pass[/green]" if report.passed else "[red]FAIL[/red]",
        )
        try:
            check_variant_parity(report, force)
        except VariantParityError as e:
            progress.stop()
            console.print(table)
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from e
        step("publish")
        client.add_variant(name, version, built.entry, built.path)
        finish()
    console.print(table)
    forced = "" if report.passed else " (FORCED past the parity tolerance)"
    console.print(f"added {variant} ({built.entry.name}) to {name} {version}, signed{forced}")
