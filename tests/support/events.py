"""Event factories: the shapes AWS hands to the Lambdas (API Gateway REST, MSK, Kinesis)."""

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext


class FakeContext(LambdaContext):
    _function_name = "fraudsys-test"
    _memory_limit_in_mb = 1024
    _invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:fraudsys-test"
    _aws_request_id = "00000000-0000-0000-0000-000000000000"


def api_gateway_event(
    method: str, path: str, body: Any = None, raw_body: str | None = None
) -> dict[str, Any]:
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "127.0.0.1"},
            "accountId": "123456789012",
            "apiId": "1234567890",
        },
        "body": text,
        "isBase64Encoded": False,
    }


def msk_event(records: Sequence[tuple[str, bytes]], first_offset: int = 0) -> dict[str, Any]:
    """An MSK event source event; ``records`` are (topic, value) pairs, all in partition 0."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for offset, (topic, value) in enumerate(records, start=first_offset):
        grouped.setdefault(f"{topic}-0", []).append(
            {
                "topic": topic,
                "partition": 0,
                "offset": offset,
                "timestamp": 1_700_000_000_000,
                "timestampType": "CREATE_TIME",
                "key": base64.b64encode(b"k").decode(),
                "value": base64.b64encode(value).decode(),
                "headers": [],
            }
        )
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/fraudsys/abc",
        "bootstrapServers": "b-1.fraudsys:9098",
        "records": grouped,
    }


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
