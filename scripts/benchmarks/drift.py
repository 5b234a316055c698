"""Drift detection: Corral's detector and Evidently side by side on the same camera streams.

``drift.compare`` trains the ten-class Animal-MNIST model (``corral train``, four
epochs, about 0.87 test accuracy) and films a simulated fleet with it:

- every picture comes from the test split, held out from training: the images
  the bundle's ``drift_baseline`` was computed on, and Evidently's reference;
- :data:`DEVICES` cameras at :data:`FPS` frames per second, one inference window
  every :data:`WINDOW_S` seconds, built by the agent's own
  :class:`agent.pipeline.Window` (frames, predicted-class counts, the 10-bin
  confidence histogram), so the registry reads exactly what an agent sends;
- camera-like autocorrelation: an animal stays in view for a geometric number of
  frames (each device's mean drawn from :data:`DWELL_FRAMES`), every frame the
  same picture moved by up to a pixel with sensor noise: near-duplicates, which
  the model does not always label alike;
- after :data:`CLEAN_WINDOWS` windows judged clean, :data:`CHANGED_PER_SCENARIO`
  devices per scenario change: ``herd`` (two in five animals are cows or sheep,
  against one in five), ``dusk`` (half the contrast, four times the noise),
  ``inverted`` (a negative picture, as a camera stuck in a night mode).

Every frame is scored by ONNX Runtime. After each window both detectors judge
every device on the same frames, the registry's last ``window_s`` (300 s, 30
windows), from the first full one on:

- Corral: the registry's own code with :class:`~registry.alerts.AlertRules`
  defaults: :class:`~registry.alerts.DeviceWindow` over the window's payloads,
  :func:`~registry.alerts.drift`, then :func:`~registry.alerts.decide_drift`
  across the fleet (Benjamini-Hochberg, ``drift_consecutive`` evaluations in a
  row); an alarm is a device-window where the drift alert fires;
- Evidently (``pip install -e '.[bench]'``): its dataset drift as the docs use
  it, a Report per device per window with the predicted class (categorical)
  and the confidence (numerical) of every frame against the test split's, and
  the default column tests (with over 1,000 reference rows: Jensen-Shannon and
  normed Wasserstein distance at 0.1) and default dataset test (drift when at
  least half the columns drift). ``DriftedColumnsCount`` is the metric of
  ``DataDriftPreset`` that carries that test; a few windows are also run
  through the whole preset to check that both give the same verdict.

Delay: windows from the change to the first alarm, the window with the first
changed frames counted as 1; the median over changed devices (one that is
never flagged counts as the last window plus one). False alarms: alarmed
device-windows among those with no change yet (every window of an unchanged
device, and a changed device's before its change), per 1,000.

The run also prints, from the same streams, ``drift_frames_per_sample`` at
10 and 30, Evidently counting only two alarms in
a row (as ``drift_consecutive`` does), and every detector's false alarms by the
cameras' mean dwell. About 85 s on two cores (96 s of CPU), Evidently nearly half.
"""

from __future__ import annotations

import bisect
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks.common import Figure

DEVICES = 40
CHANGED_PER_SCENARIO = 4
SCENARIOS = ("herd", "dusk", "inverted")
FPS = 15
WINDOW_S = 10.0
CLEAN_WINDOWS = 30
AFTER_WINDOWS = 30
DWELL_FRAMES = (5.0, 15.0)
DWELL_BANDS = (5.0, 8.0, 11.0, 15.0)  # false alarms are also counted by these
EPOCHS = 4
MODEL, VERSION = "animals", "1.0.0"
INSTALL = (
    "pip install -e '.[bench]' (or: .venv/bin/pip install 'evidently>=0.7.23,<0.8' 'pandas<3')"
)


@dataclass
class Stream:
    """One simulated camera: what the model said about each frame, and the windows it sent."""

    device_id: str
    scenario: str | None
    dwell: float  # mean frames an animal stays in view
    predicted: np.ndarray  # int, one per frame
    confidence: np.ndarray  # float32, one per frame
    bodies: list[dict[str, Any]]  # one agent inference body per window


def _train(workdir: Path) -> Path:
    from trainer.source import ANIMAL_CLASSES

    out = workdir / "bundle"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "train",
            "--out",
            str(out),
            "--classes",
            ",".join(ANIMAL_CLASSES),
            "--epochs",
            str(EPOCHS),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    return out


class _Scorer:
    """The bundle's ONNX model, top-1 class and its softmax probability per image."""

    def __init__(self, model: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from trainer.data import preprocess

        predicted, confidence = [], []
        for start in range(0, len(images), 2048):
            logits = self.session.run(None, {self.input: preprocess(images[start : start + 2048])})
            scores = np.asarray(logits[0], dtype=np.float64)
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = scores / scores.sum(axis=1, keepdims=True)
            top = probs.argmax(axis=1)
            predicted.append(top)
            confidence.append(probs[np.arange(len(top)), top].astype(np.float32))
        return np.concatenate(predicted), np.concatenate(confidence)


def _frames(
    rng: np.random.Generator,
    padded: np.ndarray,
    picks: Callable[[int], np.ndarray],
    n: int,
    dwell: float,
    degrade: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """``n`` frames: visits of ``picks``'d pictures, each near-duplicated for its dwell."""
    visits = rng.geometric(1.0 / dwell, size=n)  # more than enough visits
    ends = np.cumsum(visits)
    count = int(np.searchsorted(ends, n)) + 1
    which = np.repeat(picks(count), visits[:count])[:n]
    side = padded.shape[1] - 2
    dy = rng.integers(0, 3, n)[:, None, None] + np.arange(side)[None, :, None]
    dx = rng.integers(0, 3, n)[:, None, None] + np.arange(side)[None, None, :]
    frames = padded[which[:, None, None], dy, dx].astype(np.int16)
    frames += rng.integers(-3, 4, frames.shape, dtype=np.int16)
    if degrade is not None:
        frames = degrade(frames)
    return np.clip(frames, 0, 255).astype(np.uint8)


def _streams(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str], scorer: _Scorer
) -> tuple[list[Stream], int]:
    """Every device's frames, scored, and cut into agent windows; and the change window."""
    from agent.pipeline import HIST_BINS, Window

    rng = np.random.default_rng(7)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    per_window = int(FPS * WINDOW_S)
    first_eval = _registry_windows() - 1
    change = first_eval + CLEAN_WINDOWS
    total = change + AFTER_WINDOWS
    farm = np.flatnonzero(np.isin(labels, [classes.index("cow"), classes.index("sheep")]))

    def uniform(k: int) -> np.ndarray:
        return rng.integers(0, len(images), k)

    def herd(k: int) -> np.ndarray:
        # Two in five visits a cow or a sheep (one in five in the test split).
        return np.where(rng.random(k) < 0.25, rng.choice(farm, k), uniform(k))

    degrades: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "dusk": lambda f: f // 2 + rng.integers(-12, 13, f.shape, dtype=np.int16),
        "inverted": lambda f: 255 - f,
    }
    scenarios: list[str | None] = [s for s in SCENARIOS for _ in range(CHANGED_PER_SCENARIO)]
    scenarios += [None] * (DEVICES - len(scenarios))
    streams = []
    for i, scenario in enumerate(scenarios):
        dwell = float(rng.uniform(*DWELL_FRAMES))
        before = _frames(rng, padded, uniform, change * per_window, dwell, None)
        n_after = (total - change) * per_window
        if scenario is None:
            after = _frames(rng, padded, uniform, n_after, dwell, None)
        else:
            after = _frames(
                rng,
                padded,
                herd if scenario == "herd" else uniform,
                n_after,
                dwell,
                degrades.get(scenario),
            )
        predicted, confidence = scorer(np.concatenate([before, after]))
        bodies = []
        for w in range(total):
            part = slice(w * per_window, (w + 1) * per_window)
            window = Window(list(classes), MODEL, VERSION)
            window.frames = per_window
            window.class_counts += np.bincount(predicted[part], minlength=len(classes))
            # The agent's own binning (agent.pipeline.Pipeline.process).
            bins = np.minimum((confidence[part] * HIST_BINS).astype(np.int64), HIST_BINS - 1)
            np.add.at(window.hist, np.maximum(bins, 0), 1)
            bodies.append(window.bodies(0, now=window.started + WINDOW_S)[0])
        device_id = f"cam-{i:02d}-{scenario or 'steady'}"
        streams.append(Stream(device_id, scenario, dwell, predicted, confidence, bodies))
    return streams, change


def _registry_windows() -> int:
    from registry.alerts import AlertRules

    return round(AlertRules().window_s / WINDOW_S)


def _corral(
    streams: list[Stream],
    baseline: dict[str, Any],
    frames_per_sample: float | None = None,
) -> dict[str, list[bool]]:
    """The registry's drift decision after every window from the first full one:
    ``{device_id: [fires, ...]}``, index 0 being the first evaluation. The rules are
    :class:`~registry.alerts.AlertRules` defaults, less ``frames_per_sample`` if given."""
    from registry.alerts import AlertRules, DeviceWindow, decide_drift, drift

    rules = AlertRules()
    if frames_per_sample is not None:
        rules = AlertRules(drift_frames_per_sample=frames_per_sample)
    span = _registry_windows()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    bodies = [s.bodies for s in streams]
    total = len(streams[0].bodies)
    streaks: dict[str, int] = {}
    fired: dict[str, list[bool]] = {s.device_id: [] for s in streams}
    for t in range(span - 1, total):
        tested = []
        for stream, own in zip(streams, bodies, strict=True):
            window = DeviceWindow(stream.device_id, MODEL, VERSION)
            for w in range(t - span + 1, t + 1):
                window.add("inference", own[w], start + timedelta(seconds=w * WINDOW_S))
            results = drift(
                window,
                baseline,
                rules.drift_frames_per_sample,
                rules.drift_large_n,
                rules.drift_max_js,
                rules.drift_max_psi,
            )
            if results:
                tested.append((stream.device_id, results))
        decisions, streaks = decide_drift(tested, streaks, rules.drift_fdr, rules.drift_consecutive)
        fires = {d.device_id: d.fires for d in decisions}
        for stream in streams:
            fired[stream.device_id].append(fires.get(stream.device_id, False))
    return fired


class _Evidently:
    """Evidently's dataset drift of one window's frames against the test split's."""

    def __init__(self, classes: Sequence[str], predicted: np.ndarray, confidence: np.ndarray):
        os.environ.setdefault("DO_NOT_TRACK", "1")
        import pandas as pd
        from evidently import DataDefinition, Dataset

        self.pd, self.Dataset = pd, Dataset
        self.names = np.asarray(classes, dtype=object)
        self.definition = DataDefinition(
            numerical_columns=["confidence"], categorical_columns=["predicted"]
        )
        self.reference = self._dataset(predicted, confidence)

    def _dataset(self, predicted: np.ndarray, confidence: np.ndarray) -> Any:
        frame = self.pd.DataFrame(
            {"predicted": self.names[predicted], "confidence": confidence.astype(np.float64)}
        )
        return self.Dataset.from_pandas(frame, data_definition=self.definition)

    def drifted(self, predicted: np.ndarray, confidence: np.ndarray, preset: bool = False) -> bool:
        """True when Evidently's default dataset drift test fails on these frames."""
        from evidently import Report
        from evidently.metrics import DriftedColumnsCount
        from evidently.presets import DataDriftPreset

        metric = DataDriftPreset() if preset else DriftedColumnsCount()
        run = Report([metric], include_tests=True).run(
            self._dataset(predicted, confidence), self.reference
        )
        tests = [t for t in run.dict()["tests"] if "Drifted Columns" in t["name"]]
        if len(tests) != 1:
            raise RuntimeError(f"expected one dataset drift test from Evidently, got {tests}")
        return bool(tests[0]["status"] != "SUCCESS")


def _evidently(
    streams: list[Stream],
    change: int,
    reference: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
) -> tuple[dict[str, list[bool]], str]:
    """Evidently's verdict per device per evaluation, like :func:`_corral`'s; a changed
    device is judged after its change only until two alarms in a row (all its delay needs)."""
    detector = _Evidently(classes, *reference)
    span = _registry_windows()
    per_window = int(FPS * WINDOW_S)
    total = len(streams[0].bodies)
    out: dict[str, list[bool]] = {}
    for stream in streams:
        flags: list[bool] = []
        for t in range(span - 1, total):
            if stream.scenario is not None and t - 1 >= change and flags[-2:] == [True, True]:
                break  # its first alarm, and first two in a row, after the change are known
            frames = slice((t - span + 1) * per_window, (t + 1) * per_window)
            flags.append(detector.drifted(stream.predicted[frames], stream.confidence[frames]))
        out[stream.device_id] = flags
    # The whole preset on a few windows: the same verdict as its DriftedColumnsCount.
    checked = 0
    for stream in streams[:: max(1, len(streams) // 4)]:
        for i in (0, len(out[stream.device_id]) - 1):
            t = span - 1 + i
            frames = slice((t - span + 1) * per_window, (t + 1) * per_window)
            args = (stream.predicted[frames], stream.confidence[frames])
            if detector.drifted(*args, preset=True) != out[stream.device_id][i]:
                raise RuntimeError(
                    f"DataDriftPreset and DriftedColumnsCount differ on {stream.device_id}"
                )
            checked += 1
    return out, f"preset checked on {checked} windows"


@dataclass
class Outcome:
    """One detector's delays and false alarms over the fleet."""

    delays: list[int]  # per changed device, in windows; AFTER_WINDOWS + 1 if never flagged
    missed: int
    false_alarms: int  # alarmed device-windows with no change yet
    raised: int  # of which the first of a run of alarms: what an operator gets paged for
    clean: int  # device-windows with no change yet
    by_scenario: dict[str, list[int]]
    by_dwell: dict[str, list[int]]  # "5-8": [false alarms, clean windows] by mean dwell

    @property
    def delay(self) -> float:
        """The median delay over changed devices."""
        return float(statistics.median(self.delays))

    @property
    def per_1000(self) -> float:
        """False alarms per 1,000 device-windows with no change."""
        return 1000.0 * self.false_alarms / self.clean

    def describe(self) -> str:
        """One line: delays per scenario and false alarms."""
        shown = ", ".join(f"{k} {v}" for k, v in self.by_scenario.items())
        dwell = ", ".join(f"{k} frames {a}/{n}" for k, (a, n) in self.by_dwell.items())
        return (
            f"delay median {self.delay:g} ({shown}; {self.missed} missed); false alarms "
            f"{self.false_alarms}/{self.clean} = {self.per_1000:.1f} per 1000 "
            f"({self.raised} raised; by mean dwell {dwell})"
        )


def _score(streams: list[Stream], flags: dict[str, list[bool]], change: int, hold: int) -> Outcome:
    """Delays and false alarms of one detector's flags; ``hold``: alarms in a row to count."""
    first_eval = _registry_windows() - 1
    delays: list[int] = []
    by_scenario: dict[str, list[int]] = {s: [] for s in SCENARIOS}
    by_dwell = {f"{a:g}-{b:g}": [0, 0] for a, b in itertools.pairwise(DWELL_BANDS)}
    bands = list(by_dwell.values())
    false_alarms = raised = clean = missed = 0
    for stream in streams:
        own = flags[stream.device_id]
        held = [i + 1 >= hold and all(own[i - hold + 1 : i + 1]) for i in range(len(own))]
        band = bands[min(len(bands) - 1, max(0, bisect.bisect(DWELL_BANDS, stream.dwell) - 1))]
        for i, alarm in enumerate(held):
            if stream.scenario is None or first_eval + i < change:
                clean += 1
                false_alarms += alarm
                raised += alarm and (i == 0 or not held[i - 1])
                band[0] += alarm
                band[1] += 1
        if stream.scenario is None:
            continue
        after = [i for i, alarm in enumerate(held) if alarm and first_eval + i >= change]
        delay = first_eval + after[0] - change + 1 if after else AFTER_WINDOWS + 1
        missed += not after
        delays.append(delay)
        by_scenario[stream.scenario].append(delay)
    return Outcome(delays, missed, false_alarms, raised, clean, by_scenario, by_dwell)


def _prepare(
    workdir: Path,
) -> tuple[list[Stream], int, dict[str, Any], list[str], tuple[np.ndarray, np.ndarray]]:
    """Train, check the reference against the bundle's baseline, film the fleet."""
    from trainer.data import load_dataset
    from trainer.source import ANIMAL_CLASSES

    bundle = _train(workdir)
    baseline = json.loads((bundle / "bundle.json").read_text())["drift_baseline"]
    classes = list(ANIMAL_CLASSES)
    dataset = load_dataset(classes=classes, test_percent=20, validation_percent=10)
    images, labels = dataset.split("test")
    scorer = _Scorer(bundle / "model.onnx")
    reference = scorer(images)
    prior = np.bincount(reference[0], minlength=len(classes)) / len(images)
    expected = [baseline["class_prior"][c] for c in classes]
    if baseline["samples"] != len(images) or not np.allclose(prior, expected):
        raise RuntimeError(
            "the test split scored here is not the one the bundle's baseline is from"
        )
    streams, change = _streams(images, labels, classes, scorer)
    return streams, change, baseline, classes, reference


def bench_compare(workdir: Path) -> list[Figure]:
    """drift.delay_windows and drift.false_alarms_per_1000_windows, beside Evidently's."""
    started = time.perf_counter()
    streams, change, baseline, classes, reference = _prepare(workdir)
    prepared = time.perf_counter()
    print(
        f"drift: {DEVICES} cameras at {FPS} fps (animals in view {DWELL_FRAMES[0]:g}-"
        f"{DWELL_FRAMES[1]:g} frames on average), {len(SCENARIOS) * CHANGED_PER_SCENARIO} "
        f"changing ({', '.join(SCENARIOS)}) after {CLEAN_WINDOWS} windows of {WINDOW_S:g} s, "
        f"judged on the registry's {_registry_windows()}-window span; "
        f"trained and filmed in {prepared - started:.0f} s"
    )
    ours = _score(streams, _corral(streams, baseline), change, hold=1)
    print(f"drift: corral, the registry's defaults: {ours.describe()}")
    for frames_per_sample in (10.0, 30.0):
        flags = _corral(streams, baseline, frames_per_sample=frames_per_sample)
        tuned = _score(streams, flags, change, hold=1)
        print(f"drift: corral, drift_frames_per_sample={frames_per_sample:g}: {tuned.describe()}")

    theirs: Outcome | None = None
    if importlib.util.find_spec("evidently") is None:
        print(f"drift.evidently_* SKIPPED: evidently is not installed; {INSTALL}")
    else:
        from importlib.metadata import version

        flags, note = _evidently(streams, change, reference, classes)
        theirs = _score(streams, flags, change, hold=1)
        name = f"evidently {version('evidently')}"
        print(f"drift: {name} ({note}): {theirs.describe()}")
        held = _score(streams, flags, change, hold=2)
        print(f"drift: {name}, two alarms in a row: {held.describe()}")
    print(f"drift: {time.perf_counter() - started:.0f} s in all")

    same = "Evidently on the same windows"
    figures = [
        Figure(
            name="drift.delay_windows",
            value=ours.delay,
            unit="windows",
            baseline=(f"{same}: {theirs.delay:g}" if theirs else "Evidently skipped")
            + f"; {ours.describe()}",
            ratio=round(ours.delay / theirs.delay, 3) if theirs and theirs.delay else None,
            goal=None,
        ),
        Figure(
            name="drift.false_alarms_per_1000_windows",
            value=round(ours.per_1000, 2),
            unit="per 1000 windows",
            baseline=(f"{same}: {theirs.per_1000:.2f}" if theirs else "Evidently skipped")
            + f"; {ours.false_alarms} of {ours.clean} unchanged device-windows",
            ratio=round(ours.per_1000 / theirs.per_1000, 3) if theirs and theirs.per_1000 else None,
            goal=None,
        ),
    ]
    if theirs is not None:
        figures += [
            Figure(
                name="drift.evidently_delay_windows",
                value=theirs.delay,
                unit="windows",
                baseline=f"DataDriftPreset defaults, every frame a row; {theirs.describe()}",
                ratio=None,
                goal=None,
            ),
            Figure(
                name="drift.evidently_false_alarms_per_1000_windows",
                value=round(theirs.per_1000, 2),
                unit="per 1000 windows",
                baseline=f"{theirs.false_alarms} of {theirs.clean} unchanged device-windows",
                ratio=None,
                goal=None,
            ),
        ]
    return figures


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "drift.compare": bench_compare,
}
