"""A stand-in for ``python -m gpu_job worker --stdio`` that injects faults: it relays every item to a
real worker one at a time, except the chosen item, for which it fails (or dies) the first ``times`` times.

    python flaky_worker.py MODE ITEM TIMES STATE_FILE -- REAL WORKER COMMAND...

ITEM is a batch index, or a shard id. MODE is ``fail`` (a retryable failure result), ``fatal`` (a
failure that will repeat), both for batches, or ``crash`` (the process exits mid-item, holding the
next item too if one comes within a second, as a worker streaming two batches would).
STATE_FILE counts injected faults across restarted processes.
"""

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

mode, item, times, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
real = subprocess.Popen(sys.argv[sys.argv.index("--") + 1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
lines: queue.Queue = queue.Queue()
threading.Thread(target=lambda: [*map(lines.put, sys.stdin), lines.put(None)], daemon=True).start()
for number, line in enumerate(iter(lines.get, None)):  # the items it is sent, numbered as a worker numbers them
    message = json.loads(line)
    injected = state.read_text().count("x") if state.exists() else 0
    if str(message["batch"]["index"] if "batch" in message else message["shard_id"]) == item and injected < times:
        state.write_text("x" * (injected + 1))
        if mode == "crash":  # as one process would: the real worker goes first, so the crash is the last word on stderr
            try:
                lines.get(timeout=1)
            except queue.Empty:
                pass
            real.kill()
            real.wait()
            print("worker: simulated crash", file=sys.stderr, flush=True)
            os._exit(3)
        result = {"event": "result", "item": number, "job_id": message["job_id"], "batch": int(item), "attempt": message["attempt"],
                  "succeeded": False, "error": "injected fault", "retryable": mode != "fatal", "worker": "flaky"}
        print(json.dumps(result), flush=True)
        continue
    real.stdin.write(line)
    real.stdin.flush()
    for out in real.stdout:
        event = json.loads(out)
        if "item" in event:
            event["item"] = number
        print(json.dumps(event), flush=True)
        if event.get("event") == "result":
            break
real.stdin.close()
sys.exit(real.wait())
