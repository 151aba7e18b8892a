"""``score-models``: one anomaly model per (device, sensor), trained and scored window by window on this machine.

Exit codes: 0 succeeded; 3 partial (some models failed, within the threshold; successes are
published); 1 failed; 2 bad input (one line on stderr, nothing already stored is lost).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gpu_job.command import worker_command
from runner import cloud
from runner.pool import Launcher, Outcome, WorkerPool, launch_worker
from shared.atomic import atomic_path
from shared.config import Settings
from shared.errors import InvalidInputError, PipelineError
from shared.many_models.report import check_threshold
from shared.many_models.run import RunPlan, finish_run, plan_run
from shared.many_models.run_state import REPORT_NAME, FolderStore
from shared.many_models.schema import DEFAULT_KEY_COLUMNS, Window, key_id, parse_key_columns
from shared.many_models.shards import ShardResult
from shared.work import SHARDS

EXIT_CODES = {"succeeded": 0, "failed": 1, "partial": 3}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score-models", description="Many anomaly models, scored on a schedule.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write synthetic readings (reference schema, labelled anomalies) and train their models")
    generate.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    generate.add_argument("--devices", type=int, default=3)
    generate.add_argument("--sensors", type=int, default=5)
    generate.add_argument("--hours", type=int, default=4, help="hours of readings; the first half is the training window (default: %(default)s)")
    generate.add_argument("--seed", type=int, default=0)
    train = commands.add_parser("train", help="train one model per key on your readings")
    train.add_argument("--data", type=Path, required=True, help="CSV with TS, the key columns and Value")
    train.add_argument("--models", type=Path, required=True, help="folder for the model files and manifest.json")
    train.add_argument("--keys", default=",".join(DEFAULT_KEY_COLUMNS), help="key columns, one model per value (default: %(default)s)")
    _window_arguments(train)
    run = commands.add_parser("run", help="score every model of the manifest on its readings in the window")
    run.add_argument("--data", type=Path, required=True, help="a readings CSV, or a folder of Event Hubs Capture files (.avro)")
    run.add_argument("--models", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True, help="the run's folder: predictions.csv, report.json, shards/")
    _window_arguments(run)
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: %(default)s)")
    send = commands.add_parser("send", help="replay a readings CSV to an Event Hub (DefaultAzureCredential, Data Sender role)")
    send.add_argument("--data", type=Path, required=True, help="CSV with TS, the key columns and Value")
    send.add_argument("--namespace", required=True, help="the Event Hubs namespace (NAME or NAME.servicebus.windows.net)")
    send.add_argument("--hub", required=True, help="the Event Hub's name")
    send.add_argument("--rate", type=float, default=0, help="readings a second (default: no limit)")
    send.add_argument("--keys", default=",".join(DEFAULT_KEY_COLUMNS), help="key columns (default: %(default)s)")
    cloud.add_models_submit(commands)
    return parser


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window-start", metavar="T", help="first time included, ISO 8601 (default: open)")
    parser.add_argument("--window-end", metavar="T", help="first time excluded, ISO 8601 (default: open)")


def train(data: Path, models_dir: Path, key_columns: tuple[str, ...], window: Window) -> int:
    from shared.many_models.readings import read_readings
    from shared.many_models.training import train_models

    summary = train_models(read_readings(data, key_columns, window), key_columns, window, models_dir)
    if summary.too_few_rows:
        names = ", ".join(key_id(key) for key in summary.too_few_rows[:5])
        print(f"warning: no model for {len(summary.too_few_rows)} keys with too few readings ({names}...)", file=sys.stderr)
    print(f"trained {len(summary.manifest.models)} models into {models_dir}", file=sys.stderr)
    return 0


def generate(args: argparse.Namespace) -> int:
    from shared.many_models.generate import generate as generate_readings

    data = args.out_dir / "sensor_data.csv"
    if data.exists():
        raise InvalidInputError(f"{data} already exists: choose another OUT_DIR")
    generated = generate_readings(args.devices, args.sensors, args.hours, args.seed)
    for frame, path in ((generated.labels, args.out_dir / "labels.csv"), (generated.readings, data)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    print(f"wrote {len(generated.readings)} readings with {len(generated.labels)} injected anomalies to {data}", file=sys.stderr)
    window = generated.training_window
    train(data, args.out_dir / "models", DEFAULT_KEY_COLUMNS, window)
    print(f"score-models run --data {data} --models {args.out_dir / 'models'} --out {args.out_dir / 'run'} "
          f"--window-start {window.end.isoformat()}")
    return 0


def score_pass(plan: RunPlan, workers: int, max_attempts: int, launcher: Launcher = launch_worker) -> None:
    """Score the plan's shards with warm worker processes (``python -m gpu_job worker --stdio --work shards``),
    recording each shard's result as it arrives. A shard whose attempt fails as a whole (its worker died) is
    retried alone; after its last attempt its models are recorded failed with the reason, and the others go on."""
    if not plan.shards:
        return
    command = worker_command(None, work=SHARDS.name, stdio=True)
    with WorkerPool(max_attempts, launcher, SHARDS) as pool, \
            tqdm(total=sum(len(shard.keys) for shard in plan.shards), unit="model", desc="scoring", disable=None) as bar:
        def outcome(done: Outcome[ShardResult]) -> None:
            if not done.final:
                tqdm.write(f"warning: {done.result.shard_id} attempt {done.attempt} failed ({done.result.error}); retrying")
                return
            plan.state.record(done.result)
            bar.update(len(done.result.models))

        pool.start(command, min(workers, len(plan.shards)))
        pool.run(plan.shards, outcome)


def run(args: argparse.Namespace, settings: Settings, launcher: Launcher = launch_worker) -> int:
    if args.workers < 1:
        raise InvalidInputError("--workers must be at least 1")
    threshold = check_threshold(settings.models_max_failed_fraction)
    started = time.perf_counter()
    plan = plan_run(args.data, args.models, args.out, Window.parse(args.window_start, args.window_end),
                    settings.models_per_shard)
    timings = {"plan": time.perf_counter() - started}
    began = time.perf_counter()
    score_pass(plan, args.workers, settings.max_attempts, launcher)
    timings["score"] = time.perf_counter() - began
    report = finish_run(plan.state, plan.manifest, FolderStore(args.out), threshold, timings,
                        {"data": str(args.data), "models_dir": str(args.models)}, lambda: time.perf_counter() - started)
    print(f"run {report['run_id']}: {report['status']}: {report['models_succeeded']} scored, "
          f"{report['models_failed']} failed, {report['models_skipped']} skipped, {report['models_no_data']} without data; "
          f"{report['rows_scored']} rows in {report['timings']['total']:.2f} s", file=sys.stderr)
    print(f"predictions: {report['predictions']}\nreport:      {Path(args.out) / REPORT_NAME}")
    return EXIT_CODES[report["status"]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "generate":
            return generate(args)
        if args.command == "train":
            return train(args.data, args.models, parse_key_columns(args.keys), Window.parse(args.window_start, args.window_end))
        if args.command == "send":
            from runner.send_readings import send_to_hub

            return send_to_hub(args.data, args.namespace, args.hub, parse_key_columns(args.keys), args.rate)
        if args.command == "submit":
            return cloud.run_models_submit(args, settings)
        return run(args, settings)
    except InvalidInputError as exc:
        print(f"score-models: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"score-models: {'failed' if args.command == 'submit' else 'error'}: {exc}", file=sys.stderr)
        return 1 if args.command == "submit" else 2
    except KeyboardInterrupt:
        print("score-models: interrupted; finished shards are kept, a re-run goes on from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
