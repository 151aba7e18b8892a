"""Readings fed through Event Hubs: real Avro files in Capture's exact schema and path layout, written with fastavro;
on Azurite, a scheduled window reads only the files of its time range across partitions, scores each reading once
and a late file in the next pass; locally, a folder of them scores like the same readings in one CSV."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import azure.functions as func
import fastavro
import pandas as pd
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.blob import ContainerClient

import durable_replay
from durable_replay import ReplayClient
from durable_replay import user_function as _user
from function_app import many_models
from function_app.activities import ACTIVITIES as VIDEO_ACTIVITIES
from function_app.many_models import ACTIVITIES, on_models_schedule, on_shard_result, start_run
from gpu_job.shard_work import ShardWork
from runner.score_models import main
from shared.config import Settings
from shared.errors import InvalidInputError
from shared.many_models.capture import in_range, parse_files_list, read_capture_file, time_range
from shared.many_models.readings import EVENTS_REJECTED, read_readings
from shared.many_models.schema import Window
from shared.many_models.shards import ShardResult
from shared.messages import MessageError
from shared.storage import run_prefix

CAPTURE_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "EventData", "namespace": "Microsoft.ServiceBus.Messaging",
    "fields": [
        {"name": "SequenceNumber", "type": "long"},
        {"name": "Offset", "type": "string"},
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {"name": "SystemProperties", "type": {"type": "map", "values": ["long", "double", "string", "bytes"]}},
        {"name": "Properties", "type": {"type": "map", "values": ["long", "double", "string", "bytes", "null"]}},
        {"name": "Body", "type": ["null", "bytes"]},
    ],
})
"""The schema Event Hubs Capture writes (learn.microsoft.com, "Capture Event Hubs data in Azure Storage": Avro)."""
HUB = "sensors-ns/readings"
LIMITS = Settings(models_per_shard=8, max_shard_workers=1, max_attempts=2, worker_idle_s=20, visibility_timeout_s=4, max_deliveries=2,
                  worker_check_s=30, shard_timeout_s=3600, sensor_capture_path=HUB, capture_interval_s=300, models_late_s=3600)
HOUR = Window.parse("2018-08-29T01:00:00", "2018-08-29T02:00:00")
FIRED_AT = datetime(2018, 8, 29, 2, 0, 7, tzinfo=timezone.utc)
DELAY = timedelta(seconds=3)
"""Readings are enqueued this long after they are taken."""


def _events(readings: pd.DataFrame) -> list[bytes]:
    """One event per reading, except every fifth event, which carries three readings as a JSON array."""
    items = [{"TS": row.TS, "Device": int(row.Device), "Sensor": int(row.Sensor), "Value": float(row.Value)}
             for row in readings.itertuples(index=False)]
    bodies, index = [], 0
    while index < len(items):
        size = 3 if len(bodies) % 5 == 4 else 1
        group = items[index : index + size]
        bodies.append(json.dumps(group if size > 1 else group[0]).encode())
        index += size
    return bodies


def capture_bytes(bodies: list[bytes], enqueued: datetime) -> bytes:
    records = [{"SequenceNumber": number, "Offset": str(number * 512), "EnqueuedTimeUtc": enqueued.strftime("%m/%d/%Y %I:%M:%S %p"),
                "SystemProperties": {"x-opt-enqueued-time": int(enqueued.timestamp() * 1000)}, "Properties": {}, "Body": body}
               for number, body in enumerate(bodies)]
    out = io.BytesIO()
    fastavro.writer(out, CAPTURE_SCHEMA, records, codec="deflate")
    return out.getvalue()


def capture_files(readings: pd.DataFrame, partitions: int = 2) -> dict[str, bytes]:
    """The readings as Capture writes them: by device over ``partitions``, one file per partition per 5 minutes of
    enqueued time, at ``<namespace>/<hub>/<partition>/YYYY/MM/DD/HH/MM/SS.avro``."""
    enqueued = pd.to_datetime(readings["TS"]) + DELAY
    files = {}
    partition = readings["Device"].astype(int) % partitions
    for (part, began), group in readings.groupby([partition, enqueued.dt.floor("5min")], sort=True):
        files[f"{HUB}/{part}/{began.strftime('%Y/%m/%d/%H/%M/%S')}.avro"] = capture_bytes(_events(group), began.to_pydatetime())
    return files


def _csv(generated: Path) -> pd.DataFrame:
    return pd.read_csv(generated / "sensor_data.csv", dtype=str)


def _inside(readings: pd.DataFrame, window: Window) -> pd.DataFrame:
    times = pd.to_datetime(readings["TS"])
    return readings[(times >= window.start) & (times < window.end)]


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(frame[["TS", "Device", "Sensor", "Value"]].astype({"Value": float}).astype(str).itertuples(index=False, name=None))


def test_a_capture_folder_scores_like_the_same_readings_in_one_csv(generated, tmp_path):
    readings = _csv(generated)
    folder = tmp_path / "capture"
    files = capture_files(readings)
    duplicated = _inside(readings, HOUR).iloc[:10]  # sent twice: the second copy lands in another partition's file
    files[f"{HUB}/7/2018/08/29/02/00/00.avro"] = capture_bytes(_events(duplicated), datetime(2018, 8, 29, 2))
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    window = ("--window-start", "2018-08-29T01:00:00")
    assert main(["run", "--data", str(generated / "sensor_data.csv"), "--models", str(generated / "models"), "--out",
                 str(tmp_path / "csv"), "--workers", "1", *window]) == 0
    assert main(["run", "--data", str(folder), "--models", str(generated / "models"), "--out", str(tmp_path / "avro"),
                 "--workers", "1", *window]) == 0
    from_csv = pd.read_csv(tmp_path / "csv" / "predictions.csv", dtype=str)
    from_capture = pd.read_csv(tmp_path / "avro" / "predictions.csv", dtype=str)
    columns = ["TS", "Device", "Sensor", "Value", "Prediction", "Score"]
    key = ["TS", "Device", "Sensor"]
    assert len(from_csv) > 1000 and len(from_capture) == len(from_csv), "every reading once, the duplicated ten too"
    left, right = (frame.sort_values(key).reset_index(drop=True)[columns] for frame in (from_csv, from_capture))
    pd.testing.assert_frame_equal(left, right)


GOOD_EVENT = json.dumps({"TS": "2018-08-29T01:00:00", "Device": 1, "Sensor": 2, "Value": 1.5}).encode()


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "event 1: not a reading"),
    (json.dumps({"TS": "2018-08-29 01:00:00", "Device": 1, "Sensor": 2}).encode(), "Value must be a finite number"),
    (b'{"TS": "2018-08-29 01:00:00", "Device": 1, "Sensor": 2, "Value": NaN}', "NaN is not a number"),
    (b'{"TS": "2018-08-29 01:00:00", "Device": 1, "Sensor": 2, "Value": 1e999}', "Value must be a finite number"),
    (json.dumps([{"TS": "2018-08-29 01:00:00", "Device": True, "Sensor": 2, "Value": 1.0}]).encode(), "Device must be"),
    (b"[" * 100_000 + b"]" * 100_000, "event 1: not a reading"),
    (json.dumps({"TS": "yesterday", "Device": 1, "Sensor": 2, "Value": 1.0}).encode(), "TS 'yesterday' is not an ISO 8601 time"),
    (None, "event 1: no Body"),
])
def test_a_malformed_event_is_skipped_and_counted_and_its_neighbours_read(tmp_path, body, reason):
    """Anyone holding Data Sender can send a bad event, and a Capture file never changes: one bad event must not fail
    every window that reads its file."""
    path = tmp_path / "00.avro"
    path.write_bytes(capture_bytes([GOOD_EVENT, body, GOOD_EVENT], datetime(2018, 8, 29, 1)))
    rows, rejected = read_capture_file(path, ("Device", "Sensor"), "ns/hub/0/2018/08/29/01/00/00.avro")
    assert rows == [["2018-08-29T01:00:00", "1", "2", 1.5]] * 2
    (line,) = rejected
    assert line.startswith("ns/hub/0/2018/08/29/01/00/00.avro: event 1") and reason in line, line
    assert "\n" not in line and str(tmp_path) not in line and len(line) < 300


def test_a_damaged_capture_file_fails_in_one_line(tmp_path):
    path = tmp_path / "00.avro"
    path.write_bytes(b"Obj\x01 not really avro")
    with pytest.raises(InvalidInputError, match="^ns/hub/0/2018/08/29/01/00/00.avro: not a readable Avro file"):
        read_capture_file(path, ("Device", "Sensor"), "ns/hub/0/2018/08/29/01/00/00.avro")


def test_event_times_with_offsets_are_read_in_utc_and_rejected_events_reach_the_count(tmp_path):
    folder = tmp_path / "capture" / HUB / "0" / "2018" / "08" / "29" / "01" / "00"
    folder.mkdir(parents=True)
    bodies = [json.dumps({"TS": "2018-08-29T03:00:01+02:00", "Device": 1, "Sensor": 2, "Value": 1.0}).encode(),
              json.dumps({"TS": "2018-08-29T01:00:02", "Device": 1, "Sensor": 2, "Value": 2.0}).encode(), b"{not json"]
    (folder / "00.avro").write_bytes(capture_bytes(bodies, datetime(2018, 8, 29, 1)))
    frame = read_readings(tmp_path / "capture", ("Device", "Sensor"), HOUR, "the readings")
    assert list(frame["TS"]) == ["2018-08-29T01:00:01", "2018-08-29T01:00:02"]
    assert frame.attrs[EVENTS_REJECTED] == 1


def test_a_reading_enqueued_just_before_its_time_by_a_fast_clock_is_in_its_windows_files():
    prefix = HUB + "/"
    first, last = time_range(HOUR, 300, 3600)
    assert in_range(f"{prefix}0/2018/08/29/00/55/00.avro", prefix, first, last), "TS 01:00:01 enqueued at 00:59:59"
    assert not in_range(f"{prefix}0/2018/08/29/00/50/00.avro", prefix, first, last)


def test_a_list_of_capture_files_is_checked_name_by_name():
    prefix, where = HUB + "/", "runs/x/inputs/y.json"
    good = [f"{prefix}0/2018/08/29/01/05/00.avro", "etag"]
    assert parse_files_list(json.dumps([good]).encode(), prefix, HOUR, 300, 3600, where)[0].name == good[0]
    for bad in (f"{prefix}0/2018/08/29/../../../x.avro", f"{prefix}0/2018/08/30/01/05/00.avro", "videos-in/clip.mp4",
                f"other-ns/readings/0/2018/08/29/01/05/00.avro"):
        with pytest.raises(InvalidInputError, match="^runs/x/inputs/y.json: "):
            parse_files_list(json.dumps([[bad, "etag"]]).encode(), prefix, HOUR, 300, 3600, where)


def test_the_timer_waits_until_capture_has_written_the_windows_last_file(monkeypatch):
    monkeypatch.setattr(many_models, "settings", replace(many_models.settings, sensor_capture_path=HUB, capture_interval_s=300))
    for fired, window in ((datetime(2018, 8, 29, 2, 0, 7, tzinfo=timezone.utc), "20180829T000000--20180829T010000"),
                          (datetime(2018, 8, 29, 2, 10, 7, tzinfo=timezone.utc), HOUR.run_id)):
        monkeypatch.setattr(many_models, "utc_now", lambda fired=fired: fired)
        client = ReplayClient()
        asyncio.run(_user(on_models_schedule)(TimerRequest(), client))
        assert [instance_id for _, instance_id, _ in client.started] == [f"score-models-{window}"], fired


# On Azurite, through the orchestration

@pytest.fixture()
def storage(models_on_azurite):
    """Azurite with the models uploaded, no readings, empty queues, and no run left from another test."""
    return models_on_azurite(LIMITS)


def _upload(service, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        service.get_blob_client(LIMITS.sensor_data_container, name).upload_blob(data, overwrite=True)


def _pass(service, queues, client: ReplayClient) -> tuple[pd.DataFrame, dict, durable_replay.Host]:
    instance_id = f"score-models-{HOUR.run_id}"

    def deliver(body: str) -> ShardResult:
        asyncio.run(_user(on_shard_result)(func.QueueMessage(body=body.encode()), client))
        return ShardResult.from_json(body)

    host = durable_replay.Host(client, instance_id, {**VIDEO_ACTIVITIES, **ACTIVITIES}, queues[LIMITS.shard_result_queue], deliver, LIMITS)
    host.until_done()
    container = service.get_container_client(LIMITS.output_container)
    predictions = pd.read_csv(io.BytesIO(container.download_blob(f"predictions/{HOUR.run_id}/predictions.csv").readall()), dtype=str)
    report = json.loads(container.download_blob(f"predictions/{HOUR.run_id}/report.json").readall())
    return predictions, report, host


def test_a_window_scores_its_capture_files_across_partitions_once_and_a_late_file_in_its_next_pass(storage, generated, monkeypatch):
    service, queues = storage
    readings = _csv(generated)
    late = _inside(readings, HOUR).iloc[-40:]  # left out of the files of their enqueued time: they arrive in a later file
    late_keys = set(zip(late["TS"], late["Device"], late["Sensor"]))
    kept = readings[[key not in late_keys for key in zip(readings["TS"], readings["Device"], readings["Sensor"])]]
    _upload(service, capture_files(kept, partitions=3))
    duplicated = _inside(kept, HOUR).iloc[100:130]  # sent twice: again in partition 1's last file of the hour
    _upload(service, {f"{HUB}/1/2018/08/29/01/59/59.avro": capture_bytes(_events(duplicated), datetime(2018, 8, 29, 1, 59, 59))})
    far = {f"{HUB}/0/2018/08/29/05/00/00.avro": capture_bytes(_events(readings.iloc[:5]), datetime(2018, 8, 29, 5)),
           f"{HUB}/0/2018/08/28/20/00/00.avro": capture_bytes(_events(readings.iloc[5:10]), datetime(2018, 8, 28, 20))}
    _upload(service, far)  # outside the window's time range: never listed, never read

    listed_prefixes = []
    list_blobs = ContainerClient.list_blobs

    def recording(self, name_starts_with=None, **kwargs):
        if self.container_name == LIMITS.sensor_data_container:
            listed_prefixes.append(name_starts_with)
        return list_blobs(self, name_starts_with=name_starts_with, **kwargs)

    walked = []
    walk_blobs = ContainerClient.walk_blobs

    def recording_walk(self, name_starts_with=None, **kwargs):
        if self.container_name == LIMITS.sensor_data_container:
            walked.append((name_starts_with, kwargs.get("delimiter")))
        return walk_blobs(self, name_starts_with=name_starts_with, **kwargs)

    monkeypatch.setattr(ContainerClient, "list_blobs", recording)
    monkeypatch.setattr(ContainerClient, "walk_blobs", recording_walk)
    monkeypatch.setattr(many_models, "utc_now", lambda: FIRED_AT)
    client = ReplayClient()
    asyncio.run(_user(on_models_schedule)(TimerRequest(), client))  # the hourly firing for 01:00-02:00
    first, report, _ = _pass(service, queues, client)
    expected = _inside(kept, HOUR)
    assert _rows(first) == _rows(expected) and len(expected) > 500, "exactly the window's readings, the duplicated ones once"
    assert report["status"] == "succeeded" and report["models_succeeded"] == 15
    work = service.get_container_client(LIMITS.work_container)
    (listing,) = [blob.name for blob in work.list_blobs(name_starts_with=run_prefix(HOUR.run_id) + "inputs/")]
    listed = [name for name, _ in json.loads(work.download_blob(listing).readall())]
    assert not set(far) & set(listed)
    times = [datetime.strptime(name.split("/", 3)[3].removesuffix(".avro"), "%Y/%m/%d/%H/%M/%S") for name in listed]
    assert min(times) > HOUR.start - timedelta(minutes=6) and max(times) < HOUR.end + timedelta(hours=1)
    assert {name.split("/")[2] for name in listed} == {"0", "1", "2"}, "every partition"
    hours = {f"{HUB}/{p}/2018/08/29/{hour:02d}/" for p in range(3) for hour in (0, 1, 2)}  # 00:55 to 03:00
    assert walked == [(f"{HUB}/", "/")], "the partition folders alone are walked, one level deep"
    assert set(listed_prefixes) == hours, \
        "only the hour folders of the window's time range are listed, never the whole history"

    late_file = {f"{HUB}/2/2018/08/29/02/40/00.avro": capture_bytes(_events(late), datetime(2018, 8, 29, 2, 40))}
    _upload(service, late_file)
    asyncio.run(start_run(client, HOUR, again=True))  # the next pass over the window: a backfill
    second, report, _ = _pass(service, queues, client)
    assert _rows(second) == _rows(_inside(readings, HOUR)), "the late readings too, and every other reading still once"
    assert (report["pass"], report["models_succeeded"]) == (2, 15)


def test_a_shard_message_may_name_only_its_passs_list_of_capture_files(storage, generated):
    service, _ = storage
    _upload(service, capture_files(_inside(_csv(generated), HOUR).iloc[:200]))
    plan = many_models.plan_model_run({"run_id": HOUR.run_id, "window": HOUR.to_dict()}, LIMITS)
    shard = many_models.ShardSpec.from_dict(plan["shards"][0])
    work = ShardWork(LIMITS)
    assert work.check_queued(shard) == shard
    for data in ("sensor_data.csv", f"{HUB}/0/2018/08/29/01/00/00.avro", shard.data.replace("inputs/", "inputs/../")):
        with pytest.raises(MessageError):
            work.check_queued(replace(shard, data=data))
    listing = service.get_blob_client(LIMITS.work_container, shard.data)
    listing.upload_blob(json.dumps([["../../etc/passwd", "x"]]), overwrite=True)
    refused = work.queued(shard, 1)
    assert (refused.succeeded, refused.retryable) == (False, False) and "is not the one its shard was planned with" in refused.error


class _Producer:
    """The producer's two calls ``send`` makes, with the real client's batches (an Event Hub's limit made small)."""

    def __init__(self, max_size: int) -> None:
        self.max_size, self.sent = max_size, []

    def create_batch(self):
        from azure.eventhub import EventDataBatch

        return EventDataBatch(max_size_in_bytes=self.max_size)

    def send_batch(self, batch) -> None:
        self.sent.append(batch)


def test_the_sender_packs_every_reading_once_into_real_batches_at_its_rate(generated, tmp_path):
    from runner.send_readings import send

    data = tmp_path / "readings.csv"
    _csv(generated).iloc[:500].to_csv(data, index=False)
    producer, clock, slept = _Producer(4096), [0.0], []
    sent = send(data, producer, ("Device", "Sensor"), rate=100, sleep=lambda s: (slept.append(s), clock.__setitem__(0, clock[0] + s)),
                clock=lambda: clock[0])
    assert sent == 500 and len(producer.sent) > 5 and all(batch.size_in_bytes <= 4096 for batch in producer.sent)
    bodies = [json.loads(event.body_as_str()) for batch in producer.sent for event in batch._internal_events]
    assert [(body["TS"], body["Device"], body["Sensor"], str(body["Value"])) for body in bodies] == [
        tuple(row) for row in _csv(generated).iloc[:500][["TS", "Device", "Sensor", "Value"]].astype({"Value": float}).astype(str).itertuples(index=False)]
    assert clock[0] == pytest.approx((500 - len(producer.sent[-1])) / 100), "each batch waits until the rate allows it"

    # What the hub stored is what the Capture path reads back.
    path = tmp_path / "00.avro"
    path.write_bytes(capture_bytes([event.body_as_str().encode() for batch in producer.sent for event in batch._internal_events],
                                   datetime(2018, 8, 28, 23)))
    rows, rejected = read_capture_file(path, ("Device", "Sensor"), "x")
    assert len(rows) == 500 and rejected == []


def test_score_models_send_refuses_a_bad_rate_in_one_line(generated, capsys):
    code = main(["send", "--data", str(generated / "sensor_data.csv"), "--namespace", "ns", "--hub", "h", "--rate", "-1"])
    assert code == 2 and capsys.readouterr().err.strip() == "score-models: error: --rate must be 0 (no limit) or more readings a second"
