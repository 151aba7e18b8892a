"""Steps an orchestrator through the Durable SDK's own replay engine, playing the host's part.

Each step replays the whole history with ``df.Orchestrator``, exactly as the Durable extension
does; the test then appends what happened (activity results, raised events, fired timers) as
history events and steps again. :class:`Host` does that for a whole orchestration, with real
activities and a real results queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

import azure.durable_functions as df
from azure.durable_functions.models import DurableOrchestrationContext
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.durable_functions.models.history import HistoryEventType as E

CALL_ACTIVITY, CREATE_TIMER, WAIT_FOR_EVENT = 0, 5, 6
REPLAY_SCHEMA_V2 = 1
"""The schema Durable hosts use: task_any/task_all are compound actions naming only tasks not scheduled before (in
schema V1 a pending task reappears in every task_any that holds it)."""


def _flatten(actions):
    for action in actions:
        if "compoundActions" in action:
            yield from _flatten(action["compoundActions"])
        else:
            yield action

OUT_OF_PROC_MARKER = "$OutOfProcData$:"


def user_function(function):
    """The function as written, unwrapped from the Durable client binding (as the SDK's samples-v2 tests do)."""
    user = function.build().get_user_function()
    return getattr(user, "client_function", user)


def orchestrator_function(name: str):
    from function_app import many_models, orchestrator

    functions = {"stylize_orchestrator": orchestrator.stylize_orchestrator, "score_models_orchestrator": many_models.score_models_orchestrator}
    return functions[name].build().get_user_function().orchestrator_function


PUBLISH_ACTIVITY = "publish_status"


class Replay:
    """One orchestration. Its ``publish_status`` activities (the job's status document) are run at once, as the host
    would, by ``publisher`` (by default only kept, in order, in :attr:`published`), and not returned by :meth:`step`."""

    def __init__(self, orchestrator_fn, job: dict, instance_id: str = "job-1", name: str = "stylize_orchestrator",
                 publisher: Callable[[dict], object] | None = None) -> None:
        self.fn, self.instance_id, self.job, self.name = orchestrator_fn, instance_id, job, name
        self.publisher = publisher
        self.published: list[dict] = []
        self.clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.history: list[dict] = []
        self.actions: list[dict] = []
        self.state: dict = {}
        self._event(E.ORCHESTRATOR_STARTED)
        self._event(E.EXECUTION_STARTED, Input=json.dumps(job), Name=name, Version="")

    def _event(self, kind, **fields) -> None:
        self.history.append({"EventType": kind, "EventId": -1, "IsPlayed": False, "Timestamp": self.clock.isoformat(), **fields})

    def step(self) -> list[dict]:
        """Replay, record the actions scheduled this time, and return the activities and timers among them (the
        status documents published meanwhile aside)."""
        new = self._step()
        while publishing := [action for action in new if action.get("functionName") == PUBLISH_ACTIVITY]:
            for action in publishing:
                self.published.append(action["input"])
                self.complete(action, self.publisher(action["input"]) if self.publisher else None)
            new = [action for action in new if action not in publishing] + self._step()
        return new

    def _step(self) -> list[dict]:
        context = DurableOrchestrationContext.from_json(json.dumps({
            "history": self.history, "instanceId": self.instance_id, "isReplaying": False, "parentInstanceId": None,
            "input": self.job, "upperSchemaVersion": REPLAY_SCHEMA_V2,
        }))
        try:
            self.state = json.loads(df.Orchestrator(self.fn).handle(context))
        except Exception as exc:  # the SDK reports a failed orchestration by raising, with its state attached
            self.state = json.loads(str(exc).split(OUT_OF_PROC_MARKER, 1)[1])
        new, task_id = [], 0
        known = {action["id"] for action in self.actions}
        for action in _flatten(action for group in self.state.get("actions", []) for action in group):
            # Activities and timers take sequential task ids; external-event waits are keyed by name.
            if action["actionType"] == WAIT_FOR_EVENT:
                continue
            numbered = dict(action, id=task_id)
            if isinstance(numbered.get("input"), str):
                numbered["input"] = json.loads(numbered["input"])
            task_id += 1
            if numbered["id"] not in known:
                new.append(numbered)
        for action in new:
            if action["actionType"] == CALL_ACTIVITY:
                self._event(E.TASK_SCHEDULED, Name=action["functionName"])
            elif action["actionType"] == CREATE_TIMER:
                self._event(E.TIMER_CREATED, FireAt=action["fireAt"])
        self.actions.extend(new)
        for event in self.history:
            event["IsPlayed"] = True
        return new

    def _next_turn(self) -> None:
        self.clock += timedelta(seconds=1)
        self._event(E.ORCHESTRATOR_STARTED)

    def complete(self, action: dict, result) -> None:
        self._next_turn()
        self._event(E.TASK_COMPLETED, TaskScheduledId=action["id"], Result=json.dumps(result))

    def fail(self, action: dict, reason: str) -> None:
        self._next_turn()
        self._event(E.TASK_FAILED, TaskScheduledId=action["id"], Reason=reason, Details="")

    def raise_event(self, name: str, payload) -> None:
        self._next_turn()
        self._event(E.EVENT_RAISED, Name=name, Input=json.dumps(payload))

    def fire_timer(self, action: dict) -> None:
        self.clock = max(self.clock, datetime.fromisoformat(action["fireAt"].replace("Z", "+00:00")))
        self._next_turn()
        self._event(E.TIMER_FIRED, TimerId=action["id"], FireAt=action["fireAt"])

    @property
    def custom_status(self) -> dict:
        status = self.state.get("customStatus")
        return json.loads(status) if isinstance(status, str) else status

    @property
    def done(self) -> bool:
        """Completed, or failed (the SDK reports a failure as an error with isDone false)."""
        return bool(self.state.get("isDone") or self.state.get("error"))

    def pending_activities(self) -> list[dict]:
        return [a for a in self.actions if a["actionType"] == CALL_ACTIVITY and not self._finished(a)]

    def _finished(self, action: dict) -> bool:
        return any(e.get("TaskScheduledId") == action["id"] and e["EventType"] in (E.TASK_COMPLETED, E.TASK_FAILED) for e in self.history)


class ReplayClient:
    """The parts of ``DurableOrchestrationClient`` the app uses, answered from a :class:`Replay`."""

    def __init__(self, publisher: Callable[[dict], object] | None = None) -> None:
        self.replays: dict[str, Replay] = {}
        self.started: list[tuple[str, str, dict]] = []
        self.publisher = publisher

    async def start_new(self, name: str, instance_id: str, client_input: dict) -> str:
        self.started.append((name, instance_id, client_input))
        self.replays[instance_id] = Replay(orchestrator_function(name), client_input, instance_id, name, self.publisher)
        return instance_id

    async def get_status(self, instance_id: str):
        replay = self.replays.get(instance_id)
        if replay is None:
            return None
        status = df.OrchestrationRuntimeStatus.Running
        if replay.state.get("error"):
            status = df.OrchestrationRuntimeStatus.Failed
        elif replay.done:
            status = df.OrchestrationRuntimeStatus.Completed
        return DurableOrchestrationStatus(name=replay.name, instanceId=instance_id, runtimeStatus=status.value,
                                          createdTime=replay.history[0]["Timestamp"], lastUpdatedTime=replay.clock.isoformat(),
                                              customStatus=replay.custom_status, output=replay.state.get("output"))

    async def get_status_by(self, created_time_from=None, created_time_to=None, runtime_status=None, instance_id_prefix=None):
        statuses = [await self.get_status(instance_id) for instance_id in self.replays if instance_id.startswith(instance_id_prefix or "")]
        return [status for status in statuses if runtime_status is None or status.runtime_status in runtime_status]

    async def raise_event(self, instance_id: str, event_name: str, event_data) -> None:
        self.replays[instance_id].raise_event(event_name, event_data)


class Host:
    """Plays the Functions host for one orchestration: runs its activities, fires its worker-check timer
    when nothing has happened for a while, and hands the messages of its results queue to ``deliver``
    (the queue-triggered function, returning the parsed result)."""

    def __init__(self, client: ReplayClient, instance_id: str, activities: dict, results, deliver: Callable[[str], object],
                 limits, stall_s: float = 2.0) -> None:
        self.client, self.activities, self.results, self._deliver, self.limits = client, activities, results, deliver, limits
        self.replay = client.replays[instance_id]
        self.stall_s = stall_s
        self.timers: list[dict] = []
        self.delivered: list = []
        self.called: list[dict] = []
        self.quiet_since = time.monotonic()

    def step(self) -> None:
        for action in self.replay.step():
            if action["actionType"] == CALL_ACTIVITY:
                self.called.append(action)
                try:
                    self.replay.complete(action, self.activities[action["functionName"]](action["input"], self.limits))
                except Exception as exc:  # an activity failure reaches the orchestrator as the host reports it
                    self.replay.fail(action, str(exc))
            elif action["actionType"] == CREATE_TIMER:
                self.timers.append(action)

    def deliver(self) -> bool:
        delivered = False
        for raw in self.results.receive_messages():
            self.delivered.append(self._deliver(raw.content))
            self.results.delete_message(raw)
            delivered = True
        return delivered

    def until_done(self, timeout_s: float = 180, on_round=None) -> None:
        deadline = time.monotonic() + timeout_s
        self.quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.round(on_round):
                return
        pytest.fail(f"orchestration did not finish: {self.replay.custom_status}")

    def round(self, on_round=None) -> bool:
        """One turn of the host: step the orchestration, deliver its results, or fire its earliest timer once nothing has
        happened for ``stall_s``; True once the orchestration is done."""
        self.step()
        if self.replay.done:
            return True
        if on_round:
            on_round()
        if self.deliver():
            self.quiet_since = time.monotonic()
            return False
        if time.monotonic() - self.quiet_since > self.stall_s and self.timers:
            # The earliest pending timer is the worker check (its period is far below the deadline).
            timer = min(self.timers, key=lambda action: action["fireAt"])
            self.timers.remove(timer)
            self.replay.fire_timer(timer)
            self.quiet_since = time.monotonic()
            return False
        time.sleep(0.1)
        return False
