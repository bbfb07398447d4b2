"""Event factories for handler tests, on top of the local stack's event builders."""

import base64
import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from fraud_core.schemas import PredictRequest
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
    """An MSK event; ``records`` are (topic, value) pairs, all in partition 0, appended to the
    broker now (the updater's time guard compares event times with it)."""
    now_ms = time.time_ns() // 1_000_000
    return _msk_event(
        StreamRecord(topic, 0, offset, now_ms, b"k", value)
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
                    "approximateArrivalTimestamp": time.time(),
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


def a_request(**overrides: Any) -> PredictRequest:
    """One valid scoring request (card 4111111111111111 at a grocery); override any field.
    ``.to_event()`` gives the transaction event the scorer publishes for it."""
    fields: dict[str, Any] = {
        "cc_num": "4111111111111111",
        "merchant_name": "fraud_Kirlin and Sons",
        "category": "grocery_pos",
        "amount_usd": 12.5,
        "transaction_time": datetime(2020, 1, 1, tzinfo=UTC),
        "lat": 40.0,
        "long": -75.0,
        "city_pop": 1000,
        "merch_lat": 40.1,
        "merch_long": -75.1,
    }
    return PredictRequest.model_validate(fields | overrides)


def sqs_event(
    messages: Sequence[dict[str, Any]], queue_arn: str, region: str = "eu-west-1"
) -> dict[str, Any]:
    """The event an SQS event source mapping hands Lambda for ``messages`` as ``ReceiveMessage``
    returned them (``MessageAttributeNames=["All"]``, ``AttributeNames=["All"]``)."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": dict(m.get("Attributes") or {}),
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value["DataType"],
                    }
                    for name, value in (m.get("MessageAttributes") or {}).items()
                },
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }
