"""``corral agent``: enrol this park computer, run the agent, show what it runs.

The main CLI mounts :data:`app` as ``corral agent`` and :func:`predict` as
``corral predict`` (offline predictions over image files and manifests with a
bundle folder or a registry version, :mod:`agent.predict`, :mod:`agent.bundle_cache`).
Only typer, rich and the standard library are imported here; each command
imports the agent's heavy modules (OpenCV, ONNX Runtime, paho) when it runs, so
``corral --help`` stays fast on every role's machine.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from agent.predict import Evaluation, Prediction
    from agent.runtime import ModelRuntime

__all__ = ["EXIT_BAD_INPUT", "app", "predict"]

app = typer.Typer(no_args_is_help=True, help="Enrol and run the agent on a park computer.")
_err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The agent's data folder.")]
#: Exit code of a command given bad input (a bad bundle, image or option), as the main CLI's.
EXIT_BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


@app.command()
def enrol(
    registry: Annotated[str, typer.Option(help="Registry URL, e.g. http://registry:8000.")],
    token: Annotated[str, typer.Option(help="One-time enrolment token from an admin.")],
    device_id: Annotated[str, typer.Option("--device-id", help="This device's id.")],
    data_dir: DataDir,
    profile: Annotated[
        str | None,
        typer.Option(help="Firmware profile name; detected from the hardware if omitted."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing enrolment.")] = False,
) -> None:
    """Trade an enrolment token for this device's credentials and trust root."""
    from agent.config import default_profiles_dir
    from agent.enrol import enrol as do_enrol
    from agent.hardware import detect_facts, resolve_profile
    from corral.errors import CorralError
    from corral.profiles import load_profiles

    try:
        facts = detect_facts()
        chosen = resolve_profile(load_profiles(default_profiles_dir()), profile, facts)
        config = do_enrol(
            registry,
            token,
            device_id,
            data_dir,
            facts,
            chosen,
            pin_profile=profile is not None,
            force=force,
        )
    except CorralError as e:
        raise _fail(str(e)) from e
    typer.echo(f"enrolled {config.device_id} with {config.registry_url} (profile {chosen.name})")


@app.command()
def run(
    data_dir: DataDir,
    camera: Annotated[
        list[str],
        typer.Option(help="Camera URI: folder:/path?fps=20 or file:/path/video.mp4; repeatable."),
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    api_port: Annotated[
        int | None,
        typer.Option(help="Serve the local API (healthz, status, predict, feedback) here."),
    ] = None,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C: infer on the cameras, report, install updates."""
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agent.service import AgentService
    from corral.errors import CorralError

    try:
        AgentService(data_dir, camera, api_port=api_port).run_forever()
    except CorralError as e:
        raise _fail(str(e)) from e


@app.command()
def status(data_dir: DataDir) -> None:
    """Show the installed model and version and the firmware profile."""
    from agent.config import AgentConfig
    from agent.hardware import choose_profile
    from agent.slots import Slots
    from corral.errors import CorralError

    try:
        config = AgentConfig.load(data_dir)
        profile = choose_profile(config)
        current = Slots(data_dir).current()
    except CorralError as e:
        raise _fail(str(e)) from e
    typer.echo(f"device:  {config.device_id}")
    typer.echo(f"profile: {profile.name}")
    if current is None:
        typer.echo("model:   (none installed)")
    else:
        typer.echo(f"model:   {current.bundle.name} {current.bundle.version} ({current.variant})")
        typer.echo(f"slot:    {current.path}")


def _install_script() -> Path:
    checkout = Path(__file__).resolve().parents[1] / "scripts" / "install-agent.sh"
    if checkout.is_file():
        return checkout
    return Path(sys.prefix) / "share" / "corral" / "install-agent.sh"


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def install(ctx: typer.Context) -> None:
    """Install this computer as an agent (venv, enrolment, systemd unit); see --help.

    The same as scripts/install-agent.sh, with the same options: --registry URL
    --token TOKEN [--device-id ID] [--camera URI ...] [--prefix DIR]; --uninstall [--purge].
    """
    import subprocess

    script = _install_script()
    if not script.is_file():
        raise _fail(f"install script not found at {script}; reinstall corral")
    code = subprocess.call(["bash", str(script), *ctx.args])
    raise typer.Exit(code)


def _bad_input(message: str) -> typer.Exit:
    # Plain echo on stderr, not rich: one unwrapped line, and stdout stays clean for --json.
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=EXIT_BAD_INPUT)


def predict(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="[BUNDLE_DIR] INPUT...",
            help="Without --model, a bundle folder (bundle.json and its model files) and "
            "then the inputs; with --model, only inputs. An input is an image file (PNG, "
            "JPEG, BMP), a folder of them, or a .csv/.jsonl manifest of path[,label].",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="NAME@VERSION",
            help="Fetch this version from the registry (cached; later runs need no "
            "registry) instead of giving BUNDLE_DIR.",
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option("--registry", envvar="CORRAL_REGISTRY", help="Registry URL, for --model."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CORRAL_TOKEN", help="API token (viewer), for --model."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Where --model keeps bundles (default: $XDG_CACHE_HOME/corral/bundles, "
            "else ~/.cache/corral/bundles).",
            show_default=False,
        ),
    ] = None,
    labels_from_folders: Annotated[
        bool,
        typer.Option(
            "--labels-from-folders",
            help="Label each image of a folder input by its sub-folder (FOLDER/<label>/...) "
            "and score the predictions.",
        ),
    ] = False,
    variant: Annotated[
        str, typer.Option(help="The bundle variant to run: fp32, int8, ...")
    ] = "fp32",
    top: Annotated[int, typer.Option(min=1, help="How many of the best labels to show.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 16,
    provider: Annotated[
        list[str] | None,
        typer.Option(help="ONNX Runtime execution provider, in order (repeat); default CPU."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of a table.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Also write the predictions to this .jsonl or .csv file.")
    ] = None,
) -> None:
    """Predict images offline with a bundle, exactly as the agent would on its camera.

    Inputs with labels (a manifest's label column, or folders with
    --labels-from-folders) are scored: accuracy and per-class recall.

    Bad input (a bundle folder that is missing, invalid or tampered with, a model
    version the registry lacks or refuses, a variant the bundle lacks, an image that
    cannot be read, a bad manifest line) exits with code 2 and writes nothing.
    """
    from agent.predict import OUTPUT_FORMATS, evaluate, list_inputs, load_runtime, predict_files
    from corral.bundle import BUNDLE_FILE
    from corral.errors import CorralError

    if out is not None and (out.suffix.lower() not in OUTPUT_FORMATS or not out.parent.is_dir()):
        raise _bad_input(f"--out {out}: use a .jsonl or .csv file in an existing folder")
    first = paths[0]
    if model is not None and (first / BUNDLE_FILE).is_file():
        raise _bad_input(
            f"{first} is a bundle folder and --model {model} names a bundle too; give one: "
            "BUNDLE_DIR before the inputs, or --model NAME@VERSION and only inputs"
        )
    if model is None and (
        len(paths) < 2 or (first.exists() and not (first / BUNDLE_FILE).is_file())
    ):
        raise _bad_input(
            f"no bundle given ({first} is not a bundle folder with {BUNDLE_FILE}); give "
            "BUNDLE_DIR before the inputs, or --model NAME@VERSION (with --registry)"
        )
    inputs = paths if model is not None else paths[1:]
    try:
        listed = list_inputs(inputs, labels_from_folders)
        bundle_dir = (
            first if model is None else _fetched(model, variant, cache_dir, registry, token)
        )
        runtime = load_runtime(bundle_dir, variant, provider or ("CPUExecutionProvider",))
        predictions = predict_files(runtime, listed, batch_size=batch_size, top=top)
    except CorralError as e:
        raise _bad_input(str(e)) from e
    if out is not None:
        from agent.predict import write_predictions

        try:
            write_predictions(out, predictions)
        except OSError as e:
            typer.echo(f"error: cannot write {out}: {e.strerror}", err=True)
            raise typer.Exit(code=1) from e
    _show(runtime, predictions, evaluate(predictions), top, json_output)
    if out is not None and not json_output:
        typer.echo(f"wrote {len(predictions)} prediction(s) to {out}")


def _fetched(
    model: str, variant: str, cache_dir: Path | None, registry: str | None, token: str | None
) -> Path:
    """The cached bundle folder of ``--model``, fetched first when the cache lacks it."""
    from agent.bundle_cache import cached_bundle, default_cache_dir, parse_model
    from corral.client import RegistryClient

    name, version = parse_model(model)
    root = cache_dir if cache_dir is not None else default_cache_dir()
    try:
        # No request is made unless the cache misses: a cached bundle runs offline.
        with RegistryClient(registry, token) as client:
            directory, fetched = cached_bundle(name, version, variant, root, client)
    except OSError as e:
        typer.echo(f"error: cannot write the bundle cache {root}: {e}", err=True)
        raise typer.Exit(code=1) from e
    if fetched:
        typer.echo(
            f"fetched {name} {version} ({variant}) from {client.base_url} into {directory}",
            err=True,
        )
    return directory


def _show(
    runtime: ModelRuntime,
    predictions: list[Prediction],
    evaluation: Evaluation | None,
    top: int,
    json_output: bool,
) -> None:
    """Print the predictions as a table and summary, or as one JSON document."""
    import json

    from rich.table import Table

    bundle = runtime.bundle
    labelled = evaluation is not None
    if json_output:
        document = {
            "model": bundle.name,
            "version": bundle.version,
            "variant": runtime.variant,
            "providers": runtime.providers,
            "evaluation": None if evaluation is None else evaluation.to_dict(),
            "predictions": [p.to_dict(labelled) for p in predictions],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    table = Table(
        title=f"{bundle.name} {bundle.version} ({runtime.variant}, "
        f"{', '.join(runtime.providers)}): {len(predictions)} image(s)"
    )
    table.add_column("file", overflow="fold")
    table.add_column("label", no_wrap=True)
    table.add_column("confidence", justify="right", no_wrap=True)
    if labelled:
        table.add_column("expected", no_wrap=True)
    table.add_column(f"top {min(top, len(bundle.output.labels))}")
    marks = {True: "", False: " (wrong)", None: " (not a model label)"}
    for p in predictions:
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in p.top)
        expected = (
            [] if not labelled else ["-" if p.expected is None else p.expected + marks[p.correct]]
        )
        table.add_row(p.file, p.label, f"{p.confidence:.3f}", *expected, ranked)
    Console().print(table)
    for line in evaluation.summary() if evaluation is not None else []:
        typer.echo(line)
