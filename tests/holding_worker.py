"""A stand-in for ``python -m gpu_job worker --stdio`` (batches) that shows whether it is sent items ahead: it
answers an item only once it holds the next one too, or after a second without it, and its result's ``worker``
says how many items it held then. It styles nothing."""

import json
import queue
import sys
import threading
from collections import deque

inbox: queue.Queue = queue.Queue()


def read() -> None:
    for line in sys.stdin:
        inbox.put(json.loads(line))
    inbox.put(None)


threading.Thread(target=read, daemon=True).start()
print(json.dumps({"event": "ready", "worker": "holding"}), flush=True)
held: deque = deque()
ended = False
number = 0
while True:
    if not held:
        message = inbox.get()
        if message is None:
            break
        held.append(message)
    if len(held) < 2 and not ended:
        try:
            message = inbox.get(timeout=1)
        except queue.Empty:
            message = False
        if message is None:
            ended = True
        elif message:
            held.append(message)
    holding = len(held)
    message = held.popleft()
    print(json.dumps({"event": "result", "item": number, "job_id": message["job_id"], "batch": message["batch"]["index"],
                      "attempt": message["attempt"], "succeeded": True, "styled": message["styled"], "worker": f"holding {holding}"}),
          flush=True)
    number += 1
