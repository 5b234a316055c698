"""The Corral demo: the whole loop on this machine, on embedded defaults.

Steps, in order (each prints as it goes):
 1. a broker (the embedded amqtt one, or --broker HOST:PORT) and the registry on SQLite;
 2. train v1.0.0 on the Animal-MNIST cats and dogs, push it (the registry signs it);
 3. enrol three agents, each a separate process with its own data directory and a
    simulated camera showing held-out test images it knows the labels of;
 4. roll v1.0.0 out to all, let them run;
 5. train v1.1.0 with other hyperparameters, push it, roll it out to one device
    (canary), then to all;
 6. print the fleet table and the console URL; stay up until Ctrl-C (or exit with --once).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from corral.cli import device_table
from corral.errors import CorralError
from corral.local import LocalFleet

# Wide enough for the fleet table when the output is a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 110)
DEVICES = ("park-1", "park-2", "park-3")
MODEL = "animals"


def _step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def run(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).resolve()
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    started = time.monotonic()
    with LocalFleet(data) as fleet:
        _step("1. broker and registry")
        host, port = fleet.start_broker(args.broker)
        console.print(
            f"MQTT broker on {host}:{port}" + ("" if args.broker else " (embedded amqtt)")
        )
        client = fleet.start_registry(args.port)
        console.print(f"registry on {fleet.registry_url} (SQLite, blobs in {data / 'registry'})")

        _step("2. train and push v1.0.0")
        images = data / "camera-images"
        first = data / "bundles" / "1.0.0"
        bundle = fleet.train("1.0.0", first, test_images=images, epochs=args.epochs, width=16)
        pushed = client.push_model(bundle)
        console.print(
            f"pushed {pushed['name']} {pushed['version']}: signed into the TUF repository"
        )

        _step("3. enrol and start three agents")
        for i, device in enumerate(DEVICES):
            fleet.start_agent(device, [f"folder:{images}?fps={args.fps}&seed={i}"])
            console.print(f"{device}: enrolled, camera shows {images} at {args.fps} fps")

        _step("4. roll out v1.0.0 to all devices")
        client.start_rollout(MODEL, "1.0.0", list(DEVICES))
        fleet.wait_converged("1.0.0", DEVICES, timeout=240)
        console.print("all devices verified, installed and run v1.0.0")
        _sleep(fleet, args.soak, "v1.0.0 soak")
        console.print(device_table(client.devices()))

        _step("5. train v1.1.0 with other hyperparameters; canary, then everyone")
        bundle = fleet.train(
            "1.1.0",
            data / "bundles" / "1.1.0",
            epochs=args.epochs + 3,
            width=24,
            lr=0.003,
            seed=1,
        )
        client.push_model(bundle)
        client.start_rollout(MODEL, "1.1.0", [DEVICES[0]])
        fleet.wait_converged("1.1.0", DEVICES[:1], timeout=180)
        console.print(f"canary {DEVICES[0]} runs v1.1.0; rolling out to the rest")
        client.start_rollout(MODEL, "1.1.0", list(DEVICES))
        fleet.wait_converged("1.1.0", DEVICES, timeout=180)
        _sleep(fleet, args.soak, "v1.1.0 soak")
        # Accuracy on a handful of frames says little: wait for enough labels on v1.1.0.
        with console.status(f"waiting for {args.labels} labelled frames per device on v1.1.0"):
            fleet.wait_for(
                "enough labelled frames",
                lambda: all((d.get("labelled") or 0) >= args.labels for d in client.devices()),
                300,
            )

        _step("6. the fleet")
        devices = [d for d in client.devices() if d["device_id"] in DEVICES]
        console.print(device_table(devices))
        ok = all(d.get("version") == "1.1.0" and (d.get("accuracy") or 0) >= 0.90 for d in devices)
        console.print(f"loop finished in {time.monotonic() - started:.0f} s")
        console.print(f"console: {fleet.registry_url}/#token={fleet.admin_token}")
        console.print(f"admin token: {data / 'registry' / 'admin-token'}  logs: {fleet.logs}")
        if not ok:
            console.print("[red]not every device runs v1.1.0 with accuracy ≥ 0.90[/red]")
        if args.once:
            return 0 if ok else 1
        console.print("everything keeps running; press Ctrl-C to stop")
        try:
            fleet.wait_for("Ctrl-C", lambda: False, float("inf"))
        except KeyboardInterrupt:
            console.print("stopping agents, registry and broker")
        return 0 if ok else 1


def _sleep(fleet: LocalFleet, seconds: float, what: str) -> None:
    """Let the agents run, while checking that every process stays up."""
    end = time.monotonic() + seconds
    with console.status(f"{what}: letting the agents run for {seconds:.0f} s"):
        fleet.wait_for(what, lambda: time.monotonic() >= end, seconds + 30)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the whole Corral loop on this machine.")
    parser.add_argument("--once", action="store_true", help="exit after the final table")
    parser.add_argument("--broker", help="HOST:PORT of a running MQTT broker (default: embedded)")
    parser.add_argument("--data-dir", default="demo-data", help="where everything is kept")
    parser.add_argument("--port", type=int, default=None, help="registry port (default: free)")
    parser.add_argument("--fps", type=int, default=15, help="simulated camera frame rate")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs for v1.0.0")
    parser.add_argument("--soak", type=float, default=20.0, help="seconds to run each version")
    parser.add_argument(
        "--labels", type=int, default=300, help="labelled frames per device before the table"
    )
    args = parser.parse_args()
    # SIGTERM ends the demo like Ctrl-C does, so the fleet is stopped cleanly either way.
    # (SIGINT too: a shell that starts the demo in the background ignores it otherwise.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except CorralError as e:
        console.print(f"[red]demo failed:[/red] {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
