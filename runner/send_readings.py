"""``score-models send``: replay a readings CSV to an Event Hub, as sensors would, to try the Capture path.

One event per reading, its body the JSON reading ``{"TS", <key columns>, "Value"}``, packed into as few
batches as the hub's size limit allows and sent at ``rate`` readings a second (0: as fast as it takes).
The hub is reached with ``DefaultAzureCredential`` (the signed-in user, or a managed identity) holding
the Azure Event Hubs Data Sender role; no keys.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from shared.errors import InvalidInputError, PipelineError
from shared.many_models.schema import TS_COLUMN, VALUE_COLUMN, Window


def reading_bodies(data: Path, key_columns: tuple[str, ...]) -> Iterator[bytes]:
    """The CSV's readings (checked as a run checks them, each once) as JSON event bodies, in file order."""
    from shared.many_models.readings import read_readings

    frame = read_readings(data, key_columns, Window())
    for row in frame[[TS_COLUMN, *key_columns, VALUE_COLUMN]].itertuples(index=False, name=None):
        yield json.dumps(dict(zip((TS_COLUMN, *key_columns, VALUE_COLUMN), row)), separators=(",", ":")).encode()


def fill_batches(bodies: Iterable[bytes], new_batch: Callable[[], object]) -> Iterator[object]:
    """Full ``EventDataBatch``es of the bodies, in order (``new_batch()`` makes an empty one, sized by the hub)."""
    from azure.eventhub import EventData

    batch = new_batch()
    for body in bodies:
        try:
            batch.add(EventData(body))
        except ValueError:  # full: send it, start the next with this event
            if len(batch) == 0:
                raise InvalidInputError(f"a reading of {len(body)} bytes is larger than an event may be") from None
            yield batch
            batch = new_batch()
            batch.add(EventData(body))
    if len(batch):
        yield batch


def send(data: Path, producer, key_columns: tuple[str, ...], rate: float, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> int:
    """Send every reading of ``data`` through ``producer`` (an ``EventHubProducerClient``) at most ``rate`` a second;
    returns how many were sent."""
    if rate < 0:
        raise InvalidInputError("--rate must be 0 (no limit) or more readings a second")
    sent, began = 0, clock()
    for batch in fill_batches(reading_bodies(data, key_columns), producer.create_batch):
        if rate:
            ahead = sent / rate - (clock() - began)
            if ahead > 0:
                sleep(ahead)
        producer.send_batch(batch)
        sent += len(batch)
    return sent


def send_to_hub(data: Path, namespace: str, hub: str, key_columns: tuple[str, ...], rate: float) -> int:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.eventhub import EventHubProducerClient
    from azure.eventhub.exceptions import EventHubError
    from azure.identity import DefaultAzureCredential

    host = namespace if "." in namespace else f"{namespace}.servicebus.windows.net"
    try:
        with EventHubProducerClient(host, hub, DefaultAzureCredential()) as producer:
            sent = send(data, producer, key_columns, rate)
    except (EventHubError, ClientAuthenticationError) as exc:
        raise PipelineError(f"sending to {host}/{hub} failed: {str(exc).splitlines()[0][:200]}") from None
    print(f"sent {sent} readings to {host}/{hub}", file=sys.stderr)
    return 0
