"""Warm worker processes on this machine, fed work items over a pipe; each failed item is retried alone.

The same pool serves every kind of work (:mod:`shared.work`): ``stylize run`` feeds it video
batches, ``score-models run`` model shards. A worker is ``python -m gpu_job worker --stdio``, the
same program an Azure ML node runs; one that dies is replaced, and only what it held is retried.

A worker gets its next item before it has answered the last (while at least as many items wait as
there are workers), so a batch worker never waits for the pipe between two batches, and streams them
through its model back to back.
"""

from __future__ import annotations

import json
import os
import queue
import signal
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
ITEMS_PER_WORKER = 2
"""Items a worker holds at once: the one it works on and the next."""

Launcher = Callable[[list[str]], subprocess.Popen]


def launch_worker(command: list[str]) -> subprocess.Popen:
    """A worker in a process group of its own, so that killing it kills whatever it started too (:meth:`WorkerProcess.kill`)."""
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            process_group=0)


class WorkerProcess(Generic[M, R]):
    """One ``python -m gpu_job worker --stdio``: send it items, read their events and results (numbered by the worker
    in the order sent)."""

    def __init__(self, launcher: Launcher, command: list[str], kind: WorkKind[M, R]) -> None:
        self.kind = kind
        self.process = launcher(command)
        self.name = f"pid {self.process.pid}"
        self._leads_group = _leads_group(self.process.pid)
        self.sent = 0
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True)
        self._drain.start()

    def send(self, message: M) -> int:
        """Send an item; returns its number. A worker that died is noticed by :meth:`next_result`."""
        number, self.sent = self.sent, self.sent + 1
        try:
            self.process.stdin.write(message.to_json() + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        return number

    def next_result(self, on_event: Callable[[int, dict], None]) -> tuple[int, dict] | None:
        """The next result, as (item number, its fields; ``rejected`` for an item the worker could not read); None once
        the worker has exited. Other events about an item go to ``on_event`` with its number."""
        for line in self.process.stdout:
            event = _parse_event(line)
            kind = event.pop("event", None)
            if kind == "ready":
                self.name = event["worker"]
            elif kind == "result" and isinstance(event.get("item"), int):
                return event.pop("item"), event
            elif kind == "error" and isinstance(event.get("item"), int):  # the worker could not read it as a message
                return event["item"], {"rejected": str(event.get("error"))}
            elif kind and isinstance(event.get("item"), int):
                on_event(event["item"], {"event": kind, **event})
        return None

    def exit_reason(self) -> str:
        """Why it exited, once it has: its exit code and the last line it wrote to stderr."""
        code = self.process.wait()
        self._drain.join(timeout=5)
        last = next((line.strip() for line in reversed(self._stderr) if line.strip()), "")
        return f"worker {self.name} exited with code {code}" + (f": {last}" if last else "")

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
            self.kill()

    def kill(self) -> None:
        """Kill it, with its process group where it leads one (what it started dies with it), and wait until it has
        exited: the caller removes the folder it was writing in next."""
        if self.process.returncode is None:  # not reaped yet: its pid, and so its group's id, is no one else's
            try:
                if self._leads_group:
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    self.process.kill()
            except ProcessLookupError:
                pass
        self.process.wait()


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One attempt at one item: its position in the list, its attempt number, result and duration (from when its worker
    was free to start it: sent it, or done with the item before)."""

    index: int
    attempt: int
    result: R
    seconds: float
    final: bool
    """No other attempt follows: it succeeded, its error will repeat, or it was the last attempt allowed."""


@dataclass(frozen=True)
class _Sent:
    index: int
    number: int
    at: float


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

        A worker that dies holding one item uses up an attempt of that item. One that dies holding two (finishing one
        while it starts the next) uses up neither: both are retried alone (no item is sent behind them), where a
        death has one cause, so a batch that kills its worker every time uses up its own attempts, not its neighbour's.
        """
        pending: queue.Queue[int | None] = queue.Queue()
        for index in range(len(messages)):
            pending.put(index)
        self._remaining = len(messages)
        self._attempts = [0] * len(messages)
        self._alone: set[int] = set()
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
        held: deque[_Sent] = deque()
        answered_at = 0.0
        while True:
            if not held:
                index = pending.get()
                if index is None:
                    break
                if not self.slots[slot].alive:
                    self.slots[slot] = WorkerProcess(self.launcher, self.command, self.kind)
                self._send(slot, messages, index, held)
            process = self.slots[slot]
            with self.lock:
                alone = any(sent.index in self._alone for sent in held)
            if len(held) < ITEMS_PER_WORKER and not alone and process.alive:
                self._send_another(slot, messages, pending, held)
            answer = process.next_result(lambda number, event: self._event(held, number, event, on_event))
            if self.failure:
                return
            if answer is None:
                attempts = self._died(process, messages, held)
            else:
                number, fields = answer
                sent = next((sent for sent in held if sent.number == number), None)
                if sent is None:
                    continue
                held.remove(sent)
                with self.lock:
                    self._alone.discard(sent.index)
                attempts = [(sent, self._result(replace(messages[sent.index], attempt=self._attempts[sent.index]), fields), True)]
            now = time.perf_counter()
            for sent, result, counted in attempts:
                seconds, answered_at = now - max(sent.at, answered_at), now
                attempt = self._attempts[sent.index]
                final = counted and (result.succeeded or not result.retryable or attempt >= self.max_attempts)
                if not counted:
                    self._attempts[sent.index] -= 1  # its next attempt goes out under the same number
                try:
                    with self.outcome_lock:
                        on_outcome(Outcome(sent.index, attempt, result, seconds, final))
                except Exception as error:  # noqa: BLE001 - whatever it is, the other threads must not wait for this item
                    self._fail(error, pending)
                    return
                if final:
                    self._finished(pending)
                else:
                    pending.put(sent.index)
        self.slots[slot].release()

    def _send(self, slot: int, messages: Sequence[M], index: int, held: deque[_Sent]) -> None:
        self._attempts[index] += 1
        number = self.slots[slot].send(replace(messages[index], attempt=self._attempts[index]))
        held.append(_Sent(index, number, time.perf_counter()))

    def _send_another(self, slot: int, messages: Sequence[M], pending: queue.Queue, held: deque[_Sent]) -> None:
        """Send a busy worker the next waiting item, while at least as many wait as there are workers to take them."""
        if pending.qsize() < len(self.slots):
            return
        try:
            index = pending.get_nowait()
        except queue.Empty:
            return
        with self.lock:
            alone = index in self._alone
        if index is None or alone:  # None: the run failed; an item retried alone waits for an idle worker
            pending.put(index)
        else:
            self._send(slot, messages, index, held)

    @staticmethod
    def _event(held: deque[_Sent], number: int, event: dict, on_event: Callable[[int, dict], None]) -> None:
        index = next((sent.index for sent in held if sent.number == number), None)
        if index is not None:
            on_event(index, event)

    def _result(self, message: M, fields: dict) -> R:
        if "rejected" in fields:
            return self.kind.failed(message, f"the worker rejected the message: {fields['rejected']}", False)
        try:
            return self.kind.result(fields)
        except MessageError as exc:
            return self.kind.failed(message, str(exc), True)

    def _died(self, process: WorkerProcess[M, R], messages: Sequence[M], held: deque[_Sent]) -> list[tuple[_Sent, R, bool]]:
        """The worker exited holding ``held``: each one's failed attempt, and whether it counts. Holding one item, it
        died of that one: the attempt counts. Holding two (one finishing while the next starts), which one killed it
        is unknown: neither attempt counts. Either way each is retried alone, where a death has one cause."""
        reason = process.exit_reason()
        counted = len(held) == 1
        if not counted:
            reason += f" (holding {' and '.join(self.kind.label(messages[sent.index]) for sent in held)}: not counted)"
        with self.lock:
            self._alone.update(sent.index for sent in held)
        attempts = [(sent, self.kind.failed(replace(messages[sent.index], attempt=self._attempts[sent.index]), reason, True), counted)
                    for sent in held]
        held.clear()
        return attempts

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


def _leads_group(pid: int) -> bool:
    """Whether the process leads its own process group (as :func:`launch_worker` starts it; a launcher may not)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _parse_event(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
