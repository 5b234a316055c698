"""The ``corral`` command line.

Role commands come from the role packages and are mounted only when that role
is installed (``corral train`` from trainer, ``corral registry`` from registry,
``corral agent`` from agent), so a park computer with only the agent extra has a
working CLI. The client commands here (``devices``, ``device``, ``token``,
``api-token``, ``model``, ``alias``, ``rollout``, ``audit``) talk to the
registry's HTTP API and need nothing heavy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from corral.card import parse_ref, render_card
from corral.client import RegistryClient
from corral.errors import CorralError

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, help="Train, sign, roll out and watch image models.")
model_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry.")
rollout_app = typer.Typer(no_args_is_help=True, help="Move devices to a model version.")
token_app = typer.Typer(no_args_is_help=True, help="One-time enrolment tokens for new devices.")
api_token_app = typer.Typer(no_args_is_help=True, help="API tokens with a role, for people and CI.")
alias_app = typer.Typer(no_args_is_help=True, help="Model aliases: production, staging, champion.")
device_app = typer.Typer(no_args_is_help=True, help="Manage one device.")
alerts_app = typer.Typer(
    invoke_without_command=True, help="Fleet alerts: list, acknowledge, silence."
)
app.add_typer(model_app, name="model")
app.add_typer(rollout_app, name="rollout")
shadow_app = typer.Typer(
    no_args_is_help=True, help="Run a candidate beside the current model and only compare."
)
rollout_app.add_typer(shadow_app, name="shadow")
app.add_typer(token_app, name="token")
app.add_typer(api_token_app, name="api-token")
app.add_typer(alias_app, name="alias")
app.add_typer(device_app, name="device")
app.add_typer(alerts_app, name="alerts")
actions_app = typer.Typer(
    invoke_without_command=True, help="What governance policies did about alerts."
)
app.add_typer(actions_app, name="actions")

console = Console()

Registry = Annotated[
    str | None, typer.Option("--registry", envvar="CORRAL_REGISTRY", help="Registry URL.")
]
Token = Annotated[str | None, typer.Option("--token", envvar="CORRAL_TOKEN", help="API token.")]
Watch = Annotated[bool, typer.Option(help="Follow until every device reports the version.")]
WatchTimeout = Annotated[float, typer.Option(help="Seconds to follow with --watch.")]


def _mount_roles() -> None:
    try:
        from trainer.cli import train
    except ImportError:
        pass
    else:
        app.command("train", help="Train, evaluate and export a model bundle.")(train)
    try:
        from registry.cli import app as registry_app
        from registry.cli import keys_app
    except ImportError:
        pass
    else:
        app.add_typer(registry_app, name="registry", help="Run the registry.")
        app.add_typer(keys_app, name="keys", help="Offline TUF root keys: make, sign, rotate.")
    try:
        from agent.cli import app as agent_app
        from agent.cli import predict
    except ImportError:
        pass
    else:
        app.add_typer(agent_app, name="agent", help="Enrol and run the agent on a park computer.")
        app.command("predict", help="Predict image files offline, as the agent would.")(predict)
    try:
        from agent.simulate_cli import app as fleet_app
    except ImportError:
        pass
    else:
        app.add_typer(fleet_app, name="fleet", help="Simulate a fleet of agents.")


@contextmanager
def _registry(registry: str | None, token: str | None) -> Iterator[RegistryClient]:
    """A client for one command; a CorralError becomes a one-line error and exit code 2."""
    try:
        with RegistryClient(registry, token) as client:
            yield client
    except CorralError as e:
        raise _fail(e) from e


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def device_table(devices: list[dict[str, Any]]) -> Table:
    """A table of device summaries, as ``corral devices`` and the demo print it."""
    table = Table(title="Devices")
    left = ("device", "state", "model", "version")
    for column in (*left, "frames", "fps", "p95 ms", "accuracy", "labelled"):
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    for d in devices:
        version = _fmt(d.get("version"))
        if d.get("desired_version") and d.get("desired_version") != d.get("version"):
            version += f" → {d['desired_version']}"
        table.add_row(
            d["device_id"],
            _fmt(d.get("state")),
            _fmt(d.get("model")),
            version,
            _fmt(d.get("frames")),
            _fmt(d.get("fps"), ".1f"),
            _fmt(d.get("latency_p95_ms"), ".2f"),
            _fmt(d.get("accuracy"), ".3f"),
            _fmt(d.get("labelled")),
        )
    return table


@app.command()
def devices(registry: Registry = None, token: Token = None) -> None:
    """List enrolled devices with state, model version, fps, latency and accuracy."""
    with _registry(registry, token) as client:
        console.print(device_table(client.devices()))


@token_app.command("create")
def token_create(
    ttl: Annotated[int, typer.Option(help="Seconds the token stays valid.")] = 3600,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Create a one-time enrolment token and print it."""
    with _registry(registry, token) as client:
        created = client.create_enrolment_token(ttl)
    console.print(created["token"], soft_wrap=True, highlight=False)


@api_token_app.command("create")
def api_token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    name: Annotated[str, typer.Option(help="Who uses it; the audit log shows this name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Create a named API token with a role and print it (it is shown only this once)."""
    with _registry(registry, token) as client:
        created = client.create_api_token(name, role)
    console.print(created["token"], soft_wrap=True, highlight=False)


@api_token_app.command("list")
def api_token_list(registry: Registry = None, token: Token = None) -> None:
    """List API tokens (names, roles, who made them, revocation); never the secrets."""
    with _registry(registry, token) as client:
        tokens = client.api_tokens()
    table = Table(title="API tokens")
    for column in ("name", "role", "created", "by", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            t["name"], t["role"], t["created_at"], t["created_by"], _fmt(t.get("revoked_at"))
        )
    console.print(table)


@api_token_app.command("revoke")
def api_token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Revoke an API token at once."""
    with _registry(registry, token) as client:
        client.revoke_api_token(name)
    console.print(f"revoked API token {name}")


@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="The device id.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")] = "",
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Revoke a device: its token stops working and its MQTT messages are dropped."""
    with _registry(registry, token) as client:
        client.revoke_device(device_id, reason)
    console.print(f"revoked device {device_id}")


@app.command()
def audit(
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. rollout.create.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show the audit log: who changed what, when."""
    filters = {k: v for k, v in (("actor", actor), ("action", action)) if v is not None}
    with _registry(registry, token) as client:
        entries = client.audit(limit, **filters)
    table = Table(title="Audit log")
    for column in ("at", "actor", "action", "target"):
        table.add_column(column, no_wrap=True)
    table.add_column("details")
    for entry in entries:
        shown = entry["details"].items()
        details = ", ".join(f"{k}={v}" for k, v in shown if v not in (None, []))
        table.add_row(entry["at"], entry["actor"], entry["action"], entry["target"], details)
    console.print(table)


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
    with _registry(registry, token) as client:
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
    with _registry(registry, token) as client:
        moves = client.alias_history(model, alias)
    table = Table(title=f"{model} {alias}")
    for column in ("when", "who", "from", "to", "why"):
        table.add_column(column)
    for m in moves:
        table.add_row(
            m["moved_at"], m["moved_by"], _fmt(m["from_version"]), m["to_version"], m["reason"]
        )
    console.print(table)


@model_app.command("push")
def model_push(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory (bundle.json and files).")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Upload a bundle; the registry signs it and it becomes an immutable version."""
    with _registry(registry, token) as client:
        created = client.push_model(bundle_dir)
    console.print(
        f"pushed {created['name']} {created['version']} ({len(created['files'])} files, signed)"
    )


@model_app.command("list")
def model_list(registry: Registry = None, token: Token = None) -> None:
    """List model versions with their test accuracy."""
    with _registry(registry, token) as client:
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
            _fmt(m.get("created")),
            _fmt(metrics.get("accuracy"), ".4f"),
            _fmt(lineage.get("dataset_version"))[:12],
        )
    console.print(table)


ModelRef = Annotated[str, typer.Argument(help="The version, NAME@VERSION.")]


def _audit(ref: str, registry: str | None, token: str | None) -> dict[str, Any]:
    try:
        name, version = parse_ref(ref)
    except ValueError as e:
        raise _fail(e) from e
    with _registry(registry, token) as client:
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
        raise _fail(CorralError(f"cannot write {out}: {e}")) from e
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
        raise _fail(e) from e
    try:
        from trainer import trt
        from trainer.calibration import DEFAULT_SAMPLES, check_calibration_source, load_calibration
        from trainer.errors import TrainConfigError, TrainerError, VariantParityError
        from trainer.parity import check_variant_parity
    except ImportError as e:
        raise _fail(
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
        raise _fail(e) from e
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
        _registry(registry, token) as client,
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
            raise _fail(CorralError(f"{name} {version} already has the {variant!r} variant"))
        data = None
        if calibration is not None:
            step("read")
            try:
                data = load_calibration(
                    calibration, bundle.input, calibration_samples or DEFAULT_SAMPLES
                )
            except TrainConfigError as e:
                progress.stop()
                raise _fail(e) from e
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


_FINAL = ("succeeded", "failed", "aborted", "superseded")


def _stages_option(
    text: str, soak_s: float, min_frames: int, min_labelled: int, timeout_s: float
) -> list[dict[str, Any]]:
    stages = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size: int | str = int(item) if item.isdigit() else item
        stages.append(
            {
                "name": item if not item.isdigit() else f"{item} device(s)",
                "size": size,
                "soak_s": soak_s,
                "min_frames": min_frames,
                "min_labelled": min_labelled,
                "timeout_s": timeout_s,
            }
        )
    if not stages:
        raise CorralError(f"--stages {text!r} names no stage; e.g. --stages 1,10%,50%,100%")
    return stages


@rollout_app.command("start")
def rollout_start(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to roll out.")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Device id (repeat); all devices if none.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with it.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only this firmware profile.")] = None,
    stages: Annotated[
        str | None,
        typer.Option(help="Cumulative stage sizes, e.g. 1,10%,50%,100%; none: all at once."),
    ] = None,
    soak: Annotated[float, typer.Option(help="Seconds to watch each stage.")] = 60.0,
    min_frames: Annotated[int, typer.Option(help="Frames each stage needs.")] = 300,
    min_labelled: Annotated[int, typer.Option(help="Labelled frames each stage needs.")] = 100,
    stage_timeout: Annotated[float, typer.Option(help="Seconds per stage before it fails.")] = 900,
    mode: Annotated[str, typer.Option(help="continuous or approval.")] = "continuous",
    environment: Annotated[str, typer.Option(help="production or staging.")] = "production",
    require_staging: Annotated[
        bool, typer.Option(help="Refuse unless a staging rollout passed and was approved.")
    ] = False,
    supersede: Annotated[
        bool, typer.Option(help="Take devices over from other active rollouts.")
    ] = False,
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Roll a version out: at once, or in stages judged by gates (--stages)."""
    plan: dict[str, Any] = {
        "model": model,
        "version": version,
        "selector": {
            "devices": device or None,
            "group": group,
            "site": site,
            "tags": tag or [],
            "profile": profile,
        },
        "mode": mode,
        "environment": environment,
        "require_staging": require_staging,
        "supersede": supersede,
    }
    with _registry(registry, token) as client:
        if stages is not None:
            plan["stages"] = _stages_option(stages, soak, min_frames, min_labelled, stage_timeout)
        created = client.apply_rollout(plan)
        _started(created)
        if watch:
            _watch(client, created["id"], timeout)


@rollout_app.command("apply")
def rollout_apply(
    plan_file: Annotated[Path, typer.Argument(help="A rollout plan (TOML); see docs/rollouts.md.")],
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Start a rollout from a plan file."""
    import tomllib

    with _registry(registry, token) as client:
        try:
            plan = tomllib.loads(plan_file.read_text())
        except OSError as e:
            raise CorralError(f"cannot read {plan_file}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise CorralError(f"{plan_file} is not valid TOML: {e}") from e
        created = client.apply_rollout(plan)
        _started(created)
        if watch:
            _watch(client, created["id"], timeout)


def _started(rollout: dict[str, Any]) -> None:
    sizes = [s["devices"] for s in rollout["stages"]]
    console.print(
        f"rollout {rollout['id']}: {rollout['model']} {rollout['version']} → "
        f"{len(rollout['devices'])} device(s) in {len(sizes)} stage(s) {sizes}"
    )


@rollout_app.command("list")
def rollout_list(registry: Registry = None, token: Token = None) -> None:
    """Every rollout, newest first."""
    with _registry(registry, token) as client:
        rollouts = client.rollouts()
    table = Table(title="Rollouts")
    for column in ("id", "model", "version", "env", "state", "stage", "devices", "created"):
        table.add_column(column)
    for r in rollouts:
        stage = r["stages"][r["stage"]]["name"] if r["stages"] else ""
        table.add_row(
            str(r["id"]),
            r["model"],
            r["version"],
            r["environment"],
            r["state"],
            stage,
            str(len(r["devices"])),
            r["created_at"][:19],
        )
    console.print(table)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[
        str | None, typer.Argument(help="Rollout id; the newest if omitted.")
    ] = None,
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show a rollout's stages, gate numbers, devices and decision log."""
    with _registry(registry, token) as client:
        if rollout_id is None:
            rollouts = client.rollouts()
            if not rollouts:
                console.print("no rollouts yet")
                return
            rollout_id = str(rollouts[0]["id"])
        if watch:
            _watch(client, rollout_id, timeout)
        console.print(_rollout_view(client.rollout(rollout_id)))


def _rollout_action(
    action: str, rollout_id: str, note: str, registry: str | None, token: str | None
) -> None:
    with _registry(registry, token) as client:
        rollout = client.rollout_action(rollout_id, action, note)
    console.print(
        f"rollout {rollout_id}: {rollout['state']}"
        + (f" ({rollout['reason']})" if rollout["reason"] else "")
    )


Note = Annotated[str, typer.Option(help="Why, for the rollout's decision log.")]
RolloutId = Annotated[str, typer.Argument(help="Rollout id.")]


@rollout_app.command("approve")
def rollout_approve(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Approve the stage a rollout waits at (or sign off a finished staging rollout)."""
    _rollout_action("approve", rollout_id, note, registry, token)


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Stop advancing; devices already installing finish."""
    _rollout_action("pause", rollout_id, note, registry, token)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Go on with a paused rollout."""
    _rollout_action("resume", rollout_id, note, registry, token)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Stop and send every moved device back to the version it had."""
    _rollout_action("abort", rollout_id, note, registry, token)


@rollout_app.command("ab")
def rollout_ab(
    name: Annotated[str, typer.Argument(help="Experiment name (lowercase, digits, . _ -).")],
    model: Annotated[str, typer.Argument(help="Model name.")],
    a: Annotated[str, typer.Argument(help="Control version (cohort A).")],
    b: Annotated[str, typer.Argument(help="Candidate version (cohort B).")],
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    split: Annotated[float, typer.Option(help="Cohort B's share of the devices.")] = 0.5,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Split devices in two cohorts on two versions; compare with `corral rollout compare`."""
    body = {
        "name": name,
        "model": model,
        "a": a,
        "b": b,
        "split": split,
        "selector": {"group": group, "site": site},
    }
    with _registry(registry, token) as client:
        started = client.start_experiment(body)
    console.print(
        f"experiment {name}: {started['a']['devices']} device(s) on {a} (A, rollout "
        f"{started['a']['rollout']}), {started['b']['devices']} on {b} (B, rollout "
        f"{started['b']['rollout']})"
    )


@rollout_app.command("compare")
def rollout_compare(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show B - A for accuracy and p95 latency with 95 % confidence intervals."""
    with _registry(registry, token) as client:
        result = client.experiment(name)
    table = Table(
        title=f"Experiment {name}: {result['a']['version']} (A) vs " f"{result['b']['version']} (B)"
    )
    for column in ("figure", "A", "B", "B - A", "95 % interval", "n A", "n B", "significant"):
        table.add_column(column)
    for d in result["differences"]:
        interval = "" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        table.add_row(
            d["figure"],
            _fmt(d["a"]),
            _fmt(d["b"]),
            "" if d["diff"] is None else f"{d['diff']:+.4f}",
            interval,
            str(d["n_a"]),
            str(d["n_b"]),
            "yes" if d["significant"] else "no",
        )
    console.print(table)


ShadowName = Annotated[str, typer.Argument(help="Shadow trial name.")]


@shadow_app.command("start")
def shadow_start(
    name: Annotated[str, typer.Argument(help="Trial name (lowercase, digits, . _ -).")],
    target: Annotated[str, typer.Argument(help="The candidate, MODEL@VERSION.")],
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only these devices (repeat).")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Run MODEL@VERSION in shadow on the selected devices; what they run does not change."""
    model, _, version = target.partition("@")
    if not model or not version:
        raise CorralError(f"{target!r} should be MODEL@VERSION, e.g. animals@1.2.0")
    body = {
        "name": name,
        "model": model,
        "version": version,
        "selector": {"group": group, "site": site, "devices": device or None},
    }
    with _registry(registry, token) as client:
        started = client.start_shadow(body)
    console.print(
        f"shadow trial {name}: {model} {version} runs beside the current model on "
        f"{started['devices']} device(s); `corral rollout shadow status {name}` compares"
    )


def _p_value(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _shadow_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"Shadow trial {report['name']}: {report['model']} {report['version']} "
        f"({report['state']})"
    )
    for column in ("device", "frames", "agreement [95 %]", "cost", "acc. shadow/now", "McNemar p"):
        table.add_column(column)
    rows = [("all", report["figures"])] + [(d["device_id"], d) for d in report["per_device"]]
    for device_id, f in rows:
        low, high = f["agreement_low"], f["agreement_high"]
        agreement = _fmt(f["agreement"], ".3f") + (
            "" if low is None else f" [{low:.3f}, {high:.3f}]"
        )
        cost = f["latency"]["cost_ratio"]
        accuracy = f["accuracy"]
        table.add_row(
            device_id,
            str(f["frames"]),
            agreement,
            "-" if cost is None else f"x{cost:.2f}",
            f"{_fmt(accuracy['shadow'], '.3f')}/{_fmt(accuracy['current'], '.3f')}",
            _p_value(accuracy["mcnemar_p"]),
        )
    return table


@shadow_app.command("status")
def shadow_status(
    name: ShadowName,
    watch: Annotated[bool, typer.Option(help="Refresh every 2 s until Ctrl-C.")] = False,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Agreement, the candidate's latency cost and paired accuracy, overall and per device."""
    with _registry(registry, token) as client:
        if not watch:
            console.print(_shadow_table(client.shadow(name)))
            return
        with Live(_shadow_table(client.shadow(name)), console=console) as live:
            try:
                while True:
                    time.sleep(2.0)
                    live.update(_shadow_table(client.shadow(name)))
            except KeyboardInterrupt:
                pass


@shadow_app.command("list")
def shadow_list(registry: Registry = None, token: Token = None) -> None:
    """Every shadow trial, newest first."""
    with _registry(registry, token) as client:
        trials = client.shadows()
    table = Table(title="Shadow trials")
    for column in ("name", "candidate", "state", "devices", "started", "by"):
        table.add_column(column)
    for t in trials:
        table.add_row(
            t["name"],
            f"{t['model']} {t['version']}",
            t["state"],
            str(t["devices"]),
            _fmt(t["created_at"])[:19],
            t["created_by"],
        )
    console.print(table)


@shadow_app.command("stop")
def shadow_stop(name: ShadowName, registry: Registry = None, token: Token = None) -> None:
    """Stop the trial: its devices drop the candidate; the figures stay."""
    with _registry(registry, token) as client:
        report = client.stop_shadow(name)
    console.print(_shadow_table(report))


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    state: Annotated[str, typer.Option(help="firing, resolved or all.")] = "firing",
    rule: Annotated[str | None, typer.Option(help="Only this rule, e.g. drift.")] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """List alerts (firing ones by default)."""
    if ctx.invoked_subcommand is not None:
        return
    with _registry(registry, token) as client:
        alerts = client.alerts(state=state, rule=rule)
    if not alerts:
        console.print(f"no {state if state != 'all' else ''} alerts".replace("  ", " "))
        return
    table = Table(title=f"Alerts ({state})")
    for column in ("id", "severity", "rule", "subject", "since", "ack", "message"):
        table.add_column(column)
    for a in alerts:
        severity = {"critical": "[red]critical[/]", "warning": "[yellow]warning[/]"}.get(
            a["severity"], a["severity"]
        )
        table.add_row(
            str(a["id"]),
            severity + (" (silenced)" if a["silenced"] else ""),
            a["rule"],
            a["subject"],
            (a["started_at"] or "")[:19],
            _fmt(a["acknowledged_by"]),
            a["message"],
        )
    console.print(table)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[int, typer.Argument(help="Alert id.")],
    note: Annotated[str, typer.Option(help="What you are doing about it.")] = "",
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Acknowledge an alert (it resolves by itself when its rule stops holding)."""
    with _registry(registry, token) as client:
        alert = client.ack_alert(alert_id, note)
    console.print(f"alert {alert_id} ({alert['rule']} on {alert['subject']}) acknowledged")


@alerts_app.command("silence")
def alerts_silence(
    reason: Annotated[str, typer.Option(help="Why (kept with the silence).")],
    rule: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="device:ID, rollout:ID, or a prefix ending in *.")
    ] = None,
    hours: Annotated[float, typer.Option(help="How long.")] = 2.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Stop delivering matching alerts for a while (they are still recorded)."""
    with _registry(registry, token) as client:
        if rule is None and subject is None:
            raise CorralError("give --rule, --subject or both; a silence of everything is refused")
        made = client.silence(rule, subject, hours * 3600, reason)
    console.print(f"silence {made['id']} until {made['expires_at']}")


@actions_app.callback()
def actions_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="pending, queued, running, done, failed.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """List governance actions, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with _registry(registry, token) as client:
        actions = client.actions(state)
    table = Table(title="Governance actions")
    for column in ("id", "policy", "action", "alert", "subject", "state", "result"):
        table.add_column(column)
    for a in actions:
        result = ", ".join(f"{k}={v}" for k, v in (a["result"] or {}).items())
        table.add_row(
            str(a["id"]),
            a["policy"],
            a["action"],
            _fmt(a["alert_id"]),
            a["subject"],
            a["state"],
            result,
        )
    console.print(table)


@actions_app.command("approve")
def actions_approve(
    action_id: Annotated[int, typer.Argument(help="Action id.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Let a pending action (a retraining, a pin) run."""
    with _registry(registry, token) as client:
        action = client.approve_action(action_id)
    console.print(f"action {action_id} ({action['action']} on {action['subject']}) queued")


def _converged(rollout: dict[str, Any]) -> tuple[int, int]:
    rows = rollout.get("devices", [])
    done = sum(1 for d in rows if d.get("reported_version") == rollout["version"])
    return done, len(rows)


def _rollout_view(rollout: dict[str, Any]) -> Group:
    head = (
        f"[bold]Rollout {rollout['id']}[/]: {rollout['model']} {rollout['version']} "
        f"({rollout['environment']}) [bold]{rollout['state']}[/]"
        + (f": {rollout['reason']}" if rollout.get("reason") else "")
    )
    stages = Table(title="Stages")
    for column in ("stage", "size", "devices", "converged", "failed", "status", "gates"):
        stages.add_column(column)
    for s in rollout["stages"]:
        record = s.get("gates") or {}
        verdicts = ", ".join(
            f"{g['name']} {g['status']}" + (f" {g['value']}" if g.get("value") is not None else "")
            for g in record.get("results", [])
        )
        if record.get("waiting_for"):
            verdicts = "waiting for " + ", ".join(record["waiting_for"]) + "; " + verdicts
        stages.add_row(
            s["name"],
            str(s["size"]),
            str(s["devices"]),
            str(s["converged"]),
            str(s["failed"]),
            s["status"],
            verdicts,
        )
    devices = Table(title="Devices")
    for column in ("device", "stage", "progress", "previous", "desired", "reported", "state"):
        devices.add_column(column)
    for d in rollout.get("devices", []):
        devices.add_row(
            d["device_id"],
            str(d["stage"]),
            d["progress"],
            _fmt(d.get("previous_version")),
            _fmt(d.get("desired_version")),
            _fmt(d.get("reported_version")),
            _fmt(d.get("state")),
        )
    log = Table(title="Decision log (newest last)")
    for column in ("at", "who", "action", "message"):
        log.add_column(column)
    for e in rollout.get("log", [])[-8:]:
        log.add_row(e["at"][11:19], e["actor"], e["action"], e["message"])
    done, total = _converged(rollout)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=40),
        f"{done}/{total} device(s) on {rollout['version']}",
    )
    return Group(head, bar, stages, devices, log)


def _watch(client: RegistryClient, rollout_id: int | str, timeout: float) -> None:
    """Follow a rollout live until it ends (or, all at once, until every device has it)."""
    deadline = time.monotonic() + timeout
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            rollout = client.rollout(rollout_id)
            done, total = _converged(rollout)
            live.update(_rollout_view(rollout))
            if rollout["state"] in _FINAL:
                break
            if time.monotonic() > deadline:
                raise CorralError(
                    f"rollout {rollout_id} is still {rollout['state']} after {timeout:.0f} s "
                    f"({done}/{total} devices on {rollout['version']})"
                )
            time.sleep(1.0)
    if rollout["state"] != "succeeded":
        raise CorralError(f"rollout {rollout_id} ended {rollout['state']}: {rollout['reason']}")


def main() -> None:
    """Entry point of the ``corral`` console script."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _mount_roles()
    app()


if __name__ == "__main__":
    main()
