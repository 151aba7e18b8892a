"""Benchmarks of ``score-models``. Prints Markdown tables; results are kept in bench/RESULTS.md.

    .venv/bin/python bench/many_models.py [--sizes 15,1000,10000] [--workers 2] [--reference-size 1000]
                                          [--reference-sample 100] [--work DIR]

For each size (models = devices x 5 sensors): two hours of generated readings, models trained on
the first hour, then one scheduled run over the second hour:

1. ``score-models run`` with ``--workers`` warm worker processes: wall time (the whole command,
   interpreter start included), models/s, and how the time splits (from its report).
2. The same command again over the same window and output: everything is skipped.
3. At ``--reference-size`` only, the reference's method on the same data and models: one process
   per model, each importing scikit-learn and pandas, reading the whole CSV, keeping its device and
   sensor (and, to score the same rows, the window), unpickling its model, writing its predictions;
   two at a time, as on its two-node cluster. ``--reference-sample K`` times the first K models
   and scales to all of them (0: all).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.atomic import atomic_path  # noqa: E402
from shared.many_models.generate import generate  # noqa: E402
from shared.many_models.manifest import Manifest  # noqa: E402
from shared.many_models.model_files import load_model  # noqa: E402
from shared.many_models.readings import read_readings  # noqa: E402
from shared.many_models.schema import DEFAULT_KEY_COLUMNS  # noqa: E402
from shared.many_models.training import train_models  # noqa: E402

SENSORS = 5
HOURS = 2
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

REFERENCE_SCRIPT = """
import pickle, sys
import numpy as np, pandas as pd
device, sensor, model_path, data_path, start, out = sys.argv[1:]
data = pd.read_csv(data_path)
data = data[(data["Device"] == int(device)) & (data["Sensor"] == int(sensor))]
data = data[pd.to_datetime(data["TS"]) >= start]
with open(model_path, "rb") as f:
    pipe = pickle.load(f)
preds = np.where(pipe.predict(np.array(data["Value"]).reshape(-1, 1)) == 1, 0, 1)
pd.DataFrame({"TS": data["TS"], "Device": int(device), "Sensor": int(sensor), "Val": data["Value"],
              "Prediction": preds}).to_csv(out, index=None)
"""


def prepare(root: Path, models: int) -> tuple[Path, Path, str]:
    """Readings, labels and trained models for ``models`` series; returns data, models folder, scored window start."""
    generated = generate(devices=max(1, models // SENSORS), sensors=min(models, SENSORS), hours=HOURS, seed=0)
    data = root / "sensor_data.csv"
    with atomic_path(data) as tmp:
        generated.readings.to_csv(tmp, index=False)
    window = generated.training_window
    train_models(read_readings(data, DEFAULT_KEY_COLUMNS, window), DEFAULT_KEY_COLUMNS, window, root / "models")
    return data, root / "models", window.end.isoformat()


def score_models(data: Path, models: Path, out: Path, start: str, workers: int) -> tuple[float, dict]:
    command = [sys.executable, "-m", "runner.score_models", "run", "--data", str(data), "--models", str(models),
               "--out", str(out), "--window-start", start, "--workers", str(workers)]
    began = time.perf_counter()
    subprocess.run(command, check=True, env={**ENV, "TQDM_DISABLE": "1"}, capture_output=True)
    return time.perf_counter() - began, json.loads((out / "report.json").read_text())


def reference_method(data: Path, models: Path, start: str, root: Path, sample: int) -> tuple[float, int, int]:
    """Seconds for ``sample`` models (all when 0), two processes at a time; returns (seconds, models timed, models)."""
    manifest = Manifest.load(models)
    entries = list(manifest.models.values())
    timed = entries[:sample] if sample else entries
    pickles = root / "pickled"
    pickles.mkdir()
    for entry in timed:  # the same models, in the reference's format (pickle), made here so they are trusted
        (pickles / entry.file).write_bytes(pickle.dumps(load_model(models, entry)))
    running: list[subprocess.Popen] = []
    began = time.perf_counter()
    for entry in timed:
        if len(running) == 2:
            running.pop(0).wait()
        device, sensor = entry.key
        running.append(subprocess.Popen([sys.executable, "-c", REFERENCE_SCRIPT, device, sensor, str(pickles / entry.file),
                                         str(data), start, str(root / f"preds_{device}_{sensor}.csv")]))
    for process in running:
        if process.wait():
            raise RuntimeError("a reference process failed")
    return time.perf_counter() - began, len(timed), len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="15,1000,10000", help="models per run, comma-separated (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-size", type=int, default=1000, help="size at which the reference method runs (0: none)")
    parser.add_argument("--reference-sample", type=int, default=100, help="models the reference method times (0: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: system temp)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; workers {args.workers}\n")
    print("| models | rows scored | shards | run wall s | models/s | re-run wall s | plan s | pool s | merge s "
          "| read s* | load s* | score s* | write s* |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference = None
    with tempfile.TemporaryDirectory(prefix="bench-models-", dir=args.work) as scratch:
        for size in sizes:
            root = Path(scratch) / str(size)
            data, models, start = prepare(root, size)
            wall, report = score_models(data, models, root / "run", start, args.workers)
            rerun, again = score_models(data, models, root / "run", start, args.workers)
            assert report["models_succeeded"] == size and again["models_skipped"] == size, (report["status"], again["status"])
            t, s = report["timings"], report["timings"]["shards"]
            print(f"| {size:,} | {report['rows_scored']:,} | {report['shards']} | {wall:.2f} | {size / wall:.0f} | {rerun:.2f} "
                  f"| {t['plan']:.2f} | {t['score']:.2f} | {t['merge']:.2f} "
                  f"| {s['read']:.2f} | {s['load']:.2f} | {s['score']:.2f} | {s['write']:.2f} |", flush=True)
            if size == args.reference_size:
                seconds, timed, total = reference_method(data, models, start, root, args.reference_sample)
                reference = (size, wall, seconds, timed, total)
    print("\n\\* summed over the worker processes (each runs on its own core).")
    if reference:
        size, wall, seconds, timed, total = reference
        whole = seconds * total / timed
        note = "measured" if timed == total else f"{timed} models timed ({seconds:.1f} s), scaled to {total}"
        print(f"\n| {size:,} models, {args.workers} at a time | wall s | models/s |\n|---|---|---|")
        print(f"| score-models run ({args.workers} warm workers) | {wall:.2f} | {size / wall:.0f} |")
        print(f"| reference method (process per model) | {whole:.1f} ({note}) | {total / whole:.1f} |")
        print(f"\nspeed-up: x{whole / wall:.0f}")


if __name__ == "__main__":
    main()
