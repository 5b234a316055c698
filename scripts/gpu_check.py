"""One-shot check of Corral on a machine with an NVIDIA GPU: what it offers, the GPU tests, figures.

``scripts/gpu-check`` (docs/gpu.md) picks the Python, installs carried wheels
and runs ``gpu_check.py run --out DIR``. The steps, in order, each in a child
process with its own timeout, so that a hung driver or a stuck test ends as a
recorded timeout and never as a hung check:

1. ``machine``: Python and package versions, ``nvidia-smi`` (name, driver,
   memory, temperature, power, clocks, utilisation).
2. ``providers``: the execution providers this onnxruntime offers.
3. ``gpu_tests``: ``pytest -m gpu tests/gpu`` (junit XML in DIR), outcomes
   and skip reasons.
4. ``companion_tests``: the fast tests of the same modules on their fakes
   (runtime, engines, telemetry, hardware, trainer.trt), which must also pass on
   a machine where NVML and a GPU are real; ``tests/trainer/test_trt.py`` only
   when tuf imports (it comes in the carried wheels).
5. ``figures`` (``gpu_check.py figures``): NVML read through
   ``agent.telemetry`` idle and under a torch load; the trainer's CNN at 224x224
   through the agent's runtime and pipeline on each provider present (CPU as the
   reference), a provider absent recorded with the reason; the same network in
   PyTorch on the GPU as a reference for what a GPU provider could reach.

Everything goes to DIR/gpu-check.json; the exit status is 0 when no step
failed or timed out (skips are not failures: a machine without a GPU passes
and says "no GPU"), else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "torch",
    "nvidia-ml-py",
    "opencv-python-headless",
    "psutil",
    "typer",
    "pytest",
    "tuf",
    "cryptography",
)
COMPANION_TESTS = (
    "tests/agent/test_runtime.py",
    "tests/agent/test_engines.py",
    "tests/agent/test_telemetry.py",
    "tests/agent/test_hardware.py",
)
#: Needs tests/agent/tuf_repo.py, so tuf, securesystemslib and cryptography (scripts/gpu-wheels).
TRT_TESTS = "tests/trainer/test_trt.py"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
#: Batch sizes of the firmware profiles that use each provider (x86-nvidia, x86-cpu).
PROFILE_BATCH = {TRT: 16, CUDA: 16, CPU: 4}
MEASURE_S = 1.5
FIGURE_SIZE = 224


def _say(text: str) -> None:
    print(text, flush=True)


def _run(
    argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a command, echoing its output (stdout and stderr) line by line as it comes.

    At ``timeout_s`` its whole process group is killed, so a hung child of it
    (pytest's, say) goes too.

    Returns:
        rc (None when killed or not started), timed_out, seconds, output (all of it).
    """
    started = time.monotonic()
    try:
        child = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as e:
        return {"rc": None, "timed_out": False, "seconds": 0.0, "output": f"cannot run: {e}"}
    lines: list[str] = []

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = child.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        rc, timed_out = None, True
        _say(f"TIMEOUT: killed {argv[0]} ... after {timeout_s:.0f} s")
    reader.join(timeout=5)
    return {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - started, 1),
        "output": "".join(lines),
    }


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails to import
        return False


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _nvidia_smi() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"available": False, "reason": "nvidia-smi is not on PATH"}
    fields = "name,driver_version,memory.total,memory.used,temperature.gpu,power.draw"
    fields += ",clocks.sm,clocks.max.sm,utilization.gpu"
    argv = [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    answer = _run(argv, timeout_s=30)
    if answer["rc"] != 0:
        return {"available": False, "reason": f"nvidia-smi failed: {answer['output'][-500:]}"}
    keys = fields.split(",")
    gpus = [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
        for line in answer["output"].splitlines()
        if line.strip()
    ]
    return {"available": bool(gpus), "gpus": gpus}


def _providers(py: str) -> dict[str, Any]:
    code = "import json, onnxruntime as o; print('EPS=' + json.dumps(o.get_available_providers()))"
    answer = _run([py, "-c", code], timeout_s=60)
    found = [line[4:] for line in answer["output"].splitlines() if line.startswith("EPS=")]
    if answer["rc"] != 0 or not found:
        return {"error": answer["output"][-2000:]}
    available = json.loads(found[-1])
    return {"available": available, "cuda": CUDA in available, "tensorrt": TRT in available}


def _junit(path: Path) -> dict[str, Any]:
    """Counts and each test's outcome (with the skip or failure message) from a junit file."""
    if not path.is_file():
        return {"error": f"no {path.name} (pytest did not finish)"}
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = kind, found.get("message", "")
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time", 0)),
                "message": message[:500],
            }
        )
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "skipped")}
    counts["failed"] = sum(c["outcome"] in ("failure", "error") for c in cases)
    return {"counts": counts, "cases": cases}


def _pytest(
    py: str, paths: Sequence[str], junit: Path, timeout_s: float, gpu: bool
) -> dict[str, Any]:
    argv = [py, "-m", "pytest", *paths, "-p", "no:cacheprovider", f"--junitxml={junit}"]
    # The GPU tests print their readings: show them for passes too (-rP).
    argv += ["-m", "gpu", "-raP"] if gpu else ["-ra"]
    # Only our plugins: the GPU image has many (jaxtyping, xdist...) that must not change a run.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"}
    if _importable("pytest_timeout"):
        argv += ["-p", "pytest_timeout", "--timeout=120"]
    _say(f"$ python {' '.join(argv[1:])}")
    answer = _run(argv, timeout_s, env)
    # 0: nothing failed (a run of skips only is 0 too); 5 (nothing collected) is a failure.
    answer["ok"] = answer["rc"] == 0
    answer["tail"] = answer.pop("output")[-3000:]  # all of it is in the log
    return {**answer, **_junit(junit)}


def run(out: Path, budget_s: float) -> int:
    """The whole check; returns the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    deadline = time.monotonic() + budget_s

    def left(most: float) -> float:
        return max(5.0, min(most, deadline - time.monotonic()))

    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _say("== machine")
    report["machine"] = {
        "python": sys.version.split()[0],
        "executable": py,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wheels": os.environ.get("GPU_CHECK_WHEELS", "none"),
        "packages": _versions(),
        "nvidia_smi": _nvidia_smi(),
    }
    _say(json.dumps(report["machine"]["packages"]))
    _say("== execution providers")
    report["providers"] = _providers(py)
    _say(json.dumps(report["providers"]))
    _save(out, report)
    _say("== GPU tests (tests/gpu)")
    report["gpu_tests"] = _pytest(py, ["tests/gpu"], out / "gpu-tests.xml", left(180), gpu=True)
    _save(out, report)
    _say("== companion tests (the same modules on their fakes)")
    paths = list(COMPANION_TESTS)
    if _importable("tuf"):
        paths.append(TRT_TESTS)
    else:
        report["companion_left_out"] = f"{TRT_TESTS}: no tuf here (carry scripts/gpu-wheels)"
    report["companion_tests"] = _pytest(
        py, paths, out / "companion-tests.xml", left(120), gpu=False
    )
    _save(out, report)
    _say("== figures")
    figures = out / "figures.json"
    argv = [py, str(Path(__file__).resolve()), "figures", "--out", str(figures)]
    answer = _run(argv, left(150), {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        report["figures"] = json.loads(figures.read_text())
        figures.unlink()
    except (OSError, ValueError):
        report["figures"] = {
            "error": "the figure run wrote nothing",
            "tail": answer["output"][-3000:],
        }
    report["figures_run"] = {k: answer[k] for k in ("rc", "timed_out", "seconds")}
    _verdict(report, answer)
    _save(out, report)
    _summary(report)
    return 1 if report["failed_steps"] else 0


def _save(out: Path, report: dict[str, Any]) -> None:
    # Written after every step, so a run killed from outside still leaves what it had.
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")


def _verdict(report: dict[str, Any], figures_run: dict[str, Any]) -> None:
    """Add ``gpu`` (the GPU names or None), ``failed_steps`` and a one-line ``verdict``."""
    smi = report["machine"]["nvidia_smi"]
    nvml = report["figures"].get("nvml", {})
    names = [g.get("name") for g in smi.get("gpus", [])] or [
        g.get("name") for g in nvml.get("idle", [[]])[0]
    ]
    report["gpu"] = names or None
    failed = []
    for step, result in (
        ("gpu_tests", report["gpu_tests"]),
        ("companion_tests", report["companion_tests"]),
        ("figures", figures_run),
    ):
        if result.get("timed_out"):
            failed.append(f"{step} (timed out)")
        elif result.get("rc") != 0 or result.get("counts", {}).get("failed"):
            failed.append(f"{step} (exit {result.get('rc')})")
    report["failed_steps"] = failed
    if names:
        verdict = f"GPU: {', '.join(map(str, names))}"
    else:
        reasons = [smi.get("reason", "nvidia-smi lists none"), nvml.get("reason")]
        verdict = "no GPU: " + "; ".join(r for r in reasons if r)
    report["verdict"] = verdict + (
        f"; FAILED: {', '.join(failed)}" if failed else "; nothing failed"
    )


def _summary(report: dict[str, Any]) -> None:
    """A digest to read in a terminal's last screen; gpu-check.json has everything."""
    _say("== summary")
    _say(report["verdict"])
    _say(f"providers: {report['providers'].get('available')}")
    for step in ("gpu_tests", "companion_tests"):
        counts = report[step].get("counts", {})
        _say(f"{step}: {counts} in {report[step].get('seconds')} s")
        for case in report[step].get("cases", []):
            if case["outcome"] != "passed":
                _say(f"  {case['outcome'].upper()} {case['test']}: {case['message'][:240]}")
    if "companion_left_out" in report:
        _say(f"  left out: {report['companion_left_out']}")
    found = report["figures"]
    nvml = found.get("nvml", {})
    if nvml.get("available"):
        _say(f"NVML idle (agent.telemetry): {nvml['idle'][-1]}")
        load = nvml.get("load", {})
        _say(f"NVML under load: {load.get('gpu0', [None])[-1] if load.get('available') else load}")
    else:
        _say(f"NVML: {nvml}")
    _say(f"hardware: {found.get('hardware')}")
    for name, figure in found.get("pipeline", {}).items():
        _say(f"pipeline {name}: {figure}")
    _say(f"torch reference: {found.get('torch_reference')}")
    if "error" in found:
        _say(f"figures: {found['error']}\n{found.get('tail', '')}")


# -- figures ---------------------------------------------------------------------------


def _nvml_figures() -> dict[str, Any]:
    """Readings through agent.telemetry: three idle samples, then samples under a torch load."""
    from agent.telemetry import Nvml

    if not _importable("pynvml"):
        return {"available": False, "reason": "pynvml (nvidia-ml-py) is not installed"}
    reader = Nvml()
    if not reader.available:
        return {"available": False, "reason": "NVML did not start (no NVIDIA driver)"}
    try:
        idle = []
        for _ in range(3):
            idle.append(reader.gpus())
            time.sleep(0.2)
        return {"available": True, "idle": idle, "load": _under_load(reader)}
    finally:
        reader.close()


def _under_load(reader: Any) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "no torch"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": f"torch {torch.__version__} sees no CUDA device"}
    stop = threading.Event()

    def work() -> None:
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        while not stop.is_set():
            for _ in range(20):
                torch.matmul(a, b)
            torch.cuda.synchronize()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    samples = []
    try:
        for _ in range(10):
            time.sleep(0.25)
            samples.append(reader.gpus()[0])
    finally:
        stop.set()
        thread.join(timeout=30)
    return {"available": True, "what": "bf16 4096^3 matrix products for 2.5 s", "gpu0": samples}


def _hardware() -> dict[str, Any]:
    from agent.hardware import detect_facts, resolve_profile
    from corral.errors import ProfileError
    from corral.profiles import load_profiles

    facts = detect_facts()
    try:
        profile: str = resolve_profile(load_profiles(ROOT / "firmware-profiles"), None, facts).name
    except ProfileError as e:
        profile = f"none: {e}"
    return {"facts": facts.to_dict(), "profile": profile}


def _rate(step: Callable[[], object], frames_per_step: int, seconds: float = MEASURE_S) -> float:
    for _ in range(3):
        step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    return round(count * frames_per_step / (time.perf_counter() - started), 1)


def _frames(count: int = 8) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (FIGURE_SIZE, FIGURE_SIZE, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def _provider_figures(bundle: Any, folder: Path, provider: str) -> dict[str, Any]:
    """Bare session, the agent's runtime (IO binding on a GPU) and its pipeline, frames/s."""
    import numpy as np

    from agent.camera import Camera, MemorySource
    from agent.pipeline import Pipeline
    from agent.runtime import ModelRuntime

    batch_size = PROFILE_BATCH[provider]
    providers = [provider] if provider == CPU else [provider, CPU]
    engines = folder / "engines" if provider == TRT else None
    started = time.monotonic()
    runtime = ModelRuntime.load(
        bundle, folder, providers, precision="fp16", engine_root=engines, intra_op_threads=1
    )
    batch = np.random.default_rng(0).random((batch_size, 3, FIGURE_SIZE, FIGURE_SIZE), np.float32)
    runtime.run(batch)  # TensorRT builds its engine on the first batch
    load_s = time.monotonic() - started
    session, name = runtime.session, runtime.input_name
    bare = _rate(lambda: session.run(None, {name: batch}), batch_size)
    ours = _rate(lambda: runtime.run(batch), batch_size)
    cameras = [
        Camera(MemorySource(_frames(), fps=None, camera_id=f"mem-{i}")) for i in range(batch_size)
    ]
    pipeline = Pipeline(cameras, runtime, batch_size=batch_size)
    for camera in cameras:
        camera.start()
    pipeline.start()
    try:
        time.sleep(0.5)
        frames0, t0 = pipeline.frames_total, time.perf_counter()
        time.sleep(MEASURE_S)
        piped = (pipeline.frames_total - frames0) / (time.perf_counter() - t0)
    finally:
        pipeline.stop()
        for camera in cameras:
            camera.stop()
    return {
        "session_providers": runtime.providers,
        "batch": batch_size,
        "load_and_first_batch_s": round(load_s, 2),
        "bare_session_fps": bare,
        "runtime_fps": ours,
        "pipeline_fps": round(piped, 1),
        "pipeline_over_bare": round(piped / bare, 3) if bare else None,
    }


def _torch_reference(batch_size: int = PROFILE_BATCH[CUDA]) -> dict[str, Any]:
    """The same network (AnimalNet, seed 0) in PyTorch on the GPU: not Corral's code path."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "no torch"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": f"torch {torch.__version__} sees no CUDA device"}
    from trainer.model import AnimalNet

    torch.manual_seed(0)
    model = AnimalNet(num_classes=2, width=16, depth=3, in_channels=3).cuda().eval()
    batch = torch.rand(batch_size, 3, FIGURE_SIZE, FIGURE_SIZE, device="cuda")

    def step() -> None:
        with torch.no_grad():
            model(batch)
        torch.cuda.synchronize()

    return {"available": True, "batch": batch_size, "fps": _rate(step, batch_size)}


def figures(out: Path) -> None:
    """Measure and write the figures as JSON to ``out``; a part that fails says why."""
    import onnxruntime as ort

    from tests.gpu.models import cnn_bundle

    result: dict[str, Any] = {}
    for key, part in (("nvml", _nvml_figures), ("hardware", _hardware)):
        try:
            result[key] = part()
        except Exception as e:  # a figure that fails is recorded, the others still run
            result[key] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    available = ort.get_available_providers()
    pipeline: dict[str, Any] = {"model": f"AnimalNet w16 d3, {FIGURE_SIZE}x{FIGURE_SIZE} RGB"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        folder = Path(scratch)
        bundle = cnn_bundle(folder, size=FIGURE_SIZE, color="rgb")
        for provider in (CPU, CUDA, TRT):
            if provider not in available:
                pipeline[provider] = {
                    "available": False,
                    "reason": f"onnxruntime {ort.__version__} lacks it (has {available}); "
                    "it needs onnxruntime-gpu (docs/gpu.md)",
                }
                continue
            _say(f"measuring {provider}")
            try:
                pipeline[provider] = _provider_figures(bundle, folder, provider)
            except Exception as e:  # recorded; the next provider still runs
                pipeline[provider] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    result["pipeline"] = pipeline
    try:
        result["torch_reference"] = _torch_reference()
    except Exception as e:  # recorded like the others
        result["torch_reference"] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["run", "figures"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all steps")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT)]
    if args.what == "figures":
        figures(args.out)
        return 0
    return run(args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
