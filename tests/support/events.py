"""Event factories for handler tests, on top of the local stack's event builders."""

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

from local_stack.events import LocalContext, StreamRecord
from local_stack.events import api_gateway_event as _api_gateway_event
from local_stack.events import msk_event as _msk_event


class FakeContext(LocalContext):
    def __init__(self) -> None:
        super().__init__("fraudsys-test")


def api_gateway_event(
    method: str, path: str, body: Any = None, raw_body: str | None = None
) -> dict[str, Any]:
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    return _api_gateway_event(method, path, text, {"Content-Type": "application/json"}, stage="prod")


def msk_event(records: Sequence[tuple[str, bytes]], first_offset: int = 0) -> dict[str, Any]:
    """An MSK event; ``records`` are (topic, value) pairs, all in partition 0."""
    return _msk_event(
        StreamRecord(topic, 0, offset, 1_700_000_000_000, b"k", value)
        for offset, (topic, value) in enumerate(records, start=first_offset)
    )


def kinesis_event(values: Iterable[bytes], stream: str = "fraudsys-events") -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "k",
                    "sequenceNumber": f"{49590338271490256608559692538361571095921575989136588898 + i}",
                    "data": base64.b64encode(value).decode(),
                    "approximateArrivalTimestamp": 1_700_000_000.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:{i}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/fraudsys",
                "awsRegion": "eu-west-1",
                "eventSourceARN": f"arn:aws:kinesis:eu-west-1:123456789012:stream/{stream}",
            }
            for i, value in enumerate(values)
        ]
    }
