"""Steps an orchestrator through the Durable SDK's own replay engine, playing the host's part.

Each step replays the whole history with ``df.Orchestrator``, exactly as the Durable extension
does; the test then appends what happened (activity results, raised events, fired timers) as
history events and steps again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import azure.durable_functions as df
from azure.durable_functions.models import DurableOrchestrationContext
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.durable_functions.models.history import HistoryEventType as E

CALL_ACTIVITY, CREATE_TIMER, WAIT_FOR_EVENT = 0, 5, 6
OUT_OF_PROC_MARKER = "$OutOfProcData$:"


class Replay:
    def __init__(self, orchestrator_fn, job: dict, instance_id: str = "job-1") -> None:
        self.fn, self.instance_id, self.job = orchestrator_fn, instance_id, job
        self.clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.history: list[dict] = []
        self.actions: list[dict] = []
        self.state: dict = {}
        self._event(E.ORCHESTRATOR_STARTED)
        self._event(E.EXECUTION_STARTED, Input=json.dumps(job), Name="stylize_orchestrator", Version="")

    def _event(self, kind, **fields) -> None:
        self.history.append({"EventType": kind, "EventId": -1, "IsPlayed": False, "Timestamp": self.clock.isoformat(), **fields})

    def step(self) -> list[dict]:
        """Replay, record the actions scheduled this time, and return the activities and timers among them."""
        context = DurableOrchestrationContext.from_json(json.dumps({
            "history": self.history, "instanceId": self.instance_id, "isReplaying": False, "parentInstanceId": None,
            "input": self.job,
        }))
        try:
            self.state = json.loads(df.Orchestrator(self.fn).handle(context))
        except Exception as exc:  # the SDK reports a failed orchestration by raising, with its state attached
            self.state = json.loads(str(exc).split(OUT_OF_PROC_MARKER, 1)[1])
        flat = [action for group in self.state.get("actions", []) for action in group]
        new, task_id, timers = [], 0, {}
        known = {action["id"] for action in self.actions}
        for action in flat:
            # Activities and timers take sequential task ids; external-event waits are keyed by name.
            # Schema V1 repeats a pending timer in every task_any that holds it: same fire time, same task.
            kind = action["actionType"]
            if kind == WAIT_FOR_EVENT:
                continue
            if kind == CREATE_TIMER and action["fireAt"] in timers:
                continue
            numbered = dict(action, id=task_id)
            if kind == CREATE_TIMER:
                timers[action["fireAt"]] = task_id
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

    def __init__(self) -> None:
        self.replays: dict[str, Replay] = {}
        self.started: list[tuple[str, str, dict]] = []

    async def start_new(self, name: str, instance_id: str, client_input: dict) -> str:
        from function_app.orchestrator import stylize_orchestrator

        self.started.append((name, instance_id, client_input))
        self.replays[instance_id] = Replay(stylize_orchestrator.build().get_user_function().orchestrator_function, client_input, instance_id)
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
        return DurableOrchestrationStatus(name="stylize_orchestrator", instanceId=instance_id, runtimeStatus=status.value,
                                          createdTime=replay.history[0]["Timestamp"], lastUpdatedTime=replay.clock.isoformat(),
                                              customStatus=replay.custom_status, output=replay.state.get("output"))

    async def raise_event(self, instance_id: str, event_name: str, event_data) -> None:
        self.replays[instance_id].raise_event(event_name, event_data)
