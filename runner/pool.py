"""Warm worker processes on this machine, fed work items over a pipe; each failed item is retried alone.

The same pool serves every kind of work (:mod:`shared.work`): ``stylize run`` feeds it video
batches, ``score-models run`` model shards. A worker is ``python -m gpu_job worker --stdio``, the
same program an Azure ML node runs; one that dies is replaced, and only its item is retried.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic

from shared.messages import MessageError
from shared.work import BATCHES, M, R, WorkKind

STOP_GRACE_S = 10

Launcher = Callable[[list[str]], subprocess.Popen]


def launch_worker(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


class WorkerProcess(Generic[M, R]):
    """One ``python -m gpu_job worker --stdio``: send it an item, read its events until the item's result."""

    def __init__(self, launcher: Launcher, command: list[str], kind: WorkKind[M, R]) -> None:
        self.kind = kind
        self.process = launcher(command)
        self.name = f"pid {self.process.pid}"
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True)
        self._drain.start()

    def run(self, message: M, on_event: Callable[[dict], None]) -> R:
        """The item's result; a worker that dies on the way yields a failed, retryable result."""
        try:
            self.process.stdin.write(message.to_json() + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(message)
        for line in self.process.stdout:
            event = _parse_event(line)
            kind = event.get("event")
            if kind == "ready":
                self.name = event["worker"]
            elif kind == "result":
                try:
                    return self.kind.result({name: value for name, value in event.items() if name != "event"})
                except MessageError as exc:
                    return self.kind.failed(message, str(exc), True)
            elif kind:
                on_event(event)
        return self._died(message)

    def _died(self, message: M) -> R:
        code = self.process.wait()
        self._drain.join(timeout=5)
        last = next((line.strip() for line in reversed(self._stderr) if line.strip()), "")
        return self.kind.failed(message, f"worker {self.name} exited with code {code}" + (f": {last}" if last else ""), True)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def release(self) -> None:
        """Close its input: it exits once idle, on its own time (its teardown overlaps what the caller does next)."""
        try:
            self.process.stdin.close()
        except OSError:
            pass

    def stop(self) -> None:
        """Release it and wait for it to exit; kill it if it does not."""
        self.release()
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.process.kill()


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One attempt at one item: its position in the list, its attempt number, result and duration."""

    index: int
    attempt: int
    result: R
    seconds: float
    final: bool
    """No other attempt follows: it succeeded, its error will repeat, or it was the last attempt allowed."""


class WorkerPool(Generic[M, R]):
    """Warm worker processes sharing one list of work items; each failed item is retried alone.

    ``start`` launches them, possibly in two steps: one worker as early as possible, the rest once the work is known.
    """

    def __init__(self, max_attempts: int, launcher: Launcher = launch_worker, kind: WorkKind[M, R] = BATCHES) -> None:
        self.max_attempts, self.launcher, self.kind = max_attempts, launcher, kind
        self.command: list[str] = []
        self.lock = threading.Lock()
        self.outcome_lock = threading.Lock()
        self.failure: Exception | None = None
        self.slots: list[WorkerProcess[M, R]] = []

    def start(self, command: list[str], workers: int) -> None:
        """Launch workers running ``command`` until there are ``workers`` (a dead one is replaced with the latest command)."""
        self.command = command
        self.slots += [WorkerProcess(self.launcher, command, self.kind) for _ in range(workers - len(self.slots))]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.slots:
            if exc_info[0] is None:
                process.stop()
            else:
                process.kill()

    def run(self, messages: Sequence[M], on_outcome: Callable[[Outcome[R]], None],
            on_event: Callable[[int, dict], None] = lambda index, event: None) -> None:
        """Do every message, each until it succeeds or fails for good.

        ``on_outcome`` hears of every attempt, one at a time; an error it raises (a :class:`shared.errors.PipelineError`
        to fail the run with a reason) stops the pool, its workers killed, and is raised here.
        ``on_event`` gets each item's progress events.
        """
        pending: queue.Queue[int | None] = queue.Queue()
        for index in range(len(messages)):
            pending.put(index)
        self._remaining = len(messages)
        self._attempts = [0] * len(messages)
        threads = [threading.Thread(target=self._serve, args=(slot, messages, pending, on_outcome, on_event), daemon=True)
                   for slot in range(len(self.slots))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.failure:
            raise self.failure

    def _serve(self, slot: int, messages: Sequence[M], pending: queue.Queue, on_outcome, on_event) -> None:
        """Feed one worker items until none is left, then release it."""
        while (index := pending.get()) is not None:
            if not self.slots[slot].alive:
                self.slots[slot] = WorkerProcess(self.launcher, self.command, self.kind)
            self._attempts[index] += 1
            attempt = self._attempts[index]
            began = time.perf_counter()
            result = self.slots[slot].run(replace(messages[index], attempt=attempt), lambda event: on_event(index, event))
            if self.failure:
                return
            final = result.succeeded or not result.retryable or attempt >= self.max_attempts
            try:
                with self.outcome_lock:
                    on_outcome(Outcome(index, attempt, result, time.perf_counter() - began, final))
            except Exception as error:  # noqa: BLE001 - whatever it is, the other threads must not wait for this item
                self._fail(error, pending)
                return
            if final:
                self._finished(pending)
            else:
                pending.put(index)
        self.slots[slot].release()

    def _finished(self, pending: queue.Queue) -> None:
        with self.lock:
            self._remaining -= 1
            if self._remaining == 0:
                for _ in self.slots:
                    pending.put(None)

    def _fail(self, error: Exception, pending: queue.Queue) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = error
                for process in self.slots:
                    process.kill()
                for _ in self.slots:
                    pending.put(None)


def _parse_event(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
