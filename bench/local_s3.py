"""The local S3 candidates and the broker on them: what the local stack can keep across a kill -9.

For each local S3 (moto's server, objects in memory; ``local_stack.s3_server``, objects on disk):
whether it honours the conditional PUTs tansu's object store needs (``If-None-Match: *`` on an
existing key and ``If-Match`` with a stale ETag must answer 412), PUT and GET latency of a 4 KiB
object, then the tansu broker on it (``s3://``) against tansu in memory: ``--records`` records
of ~300 bytes produced in flushes of 200 (acks=all, linger 5 ms, two partitions), consumed by a
consumer group committing every poll, then the broker killed with SIGKILL, started again and the
log read by a new group.

    uv run python -m bench.local_s3 [--records 20000] [--requests 300]
"""

import argparse
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from confluent_kafka import Consumer, Producer
from kafka.admin import KafkaAdminClient, NewTopic

from local_stack.services import Service, free_port, start_moto, start_s3, tansu_binary, wait_for_port
from local_stack.stack import LOCAL_DUMMY_SECRET


def _status(call: Any) -> int:
    try:
        return int(call()["ResponseMetadata"]["HTTPStatusCode"])
    except botocore.exceptions.ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def probe(endpoint: str, requests: int) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="probe")
    s3.put_object(Bucket="probe", Key="k", Body=b"1", IfNoneMatch="*")
    etag = s3.head_object(Bucket="probe", Key="k")["ETag"]
    create_existing = _status(lambda: s3.put_object(Bucket="probe", Key="k", Body=b"2", IfNoneMatch="*"))
    s3.put_object(Bucket="probe", Key="k", Body=b"3", IfMatch=etag)
    stale = _status(lambda: s3.put_object(Bucket="probe", Key="k", Body=b"4", IfMatch=etag))
    body = b"x" * 4096
    out: dict[str, Any] = {"conditional_puts": create_existing == 412 and stale == 412}
    for name in ("put", "get"):
        times = []
        for i in range(requests):
            began = time.perf_counter()
            if name == "put":
                s3.put_object(Bucket="probe", Key=f"lat/{i}", Body=body)
            else:
                s3.get_object(Bucket="probe", Key=f"lat/{i}")["Body"].read()
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        out[f"{name}_p50_ms"] = times[len(times) // 2]
        out[f"{name}_p99_ms"] = times[int(len(times) * 0.99) - 1]
    return out


def broker(storage: str, endpoint: str | None, records: int) -> dict[str, Any]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    if endpoint is not None:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-broker")
        env |= {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def start() -> "subprocess.Popen[bytes]":
        process = subprocess.Popen(  # a fixed argv list, no shell  # nosec B603
            [*argv, "--storage-engine", storage], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for_port(port, 30, process)
        return process

    process = start()
    bootstrap = f"127.0.0.1:{port}"
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("bench", num_partitions=2, replication_factor=1)])
        admin.close()
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        payload = b"y" * 300
        began = time.perf_counter()
        for i in range(records):
            producer.produce("bench", payload, key=str(i % 997).encode())
            if i % 200 == 199:
                producer.flush(30)
        producer.flush(30)
        produce_s = time.perf_counter() - began

        def consume(group: str) -> tuple[int, float]:
            consumer = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
                | {"enable.auto.commit": False}
            )
            consumer.subscribe(["bench"])
            got, began, idle = 0, time.perf_counter(), time.perf_counter()
            while got < records and time.perf_counter() - idle < 30:
                messages = [m for m in consumer.consume(100, 1.0) if not m.error()]
                if messages:
                    got += len(messages)
                    consumer.commit(asynchronous=False)
                    idle = time.perf_counter()
            consumer.close()
            return got, time.perf_counter() - began

        got, consume_s = consume("first")
        process.send_signal(signal.SIGKILL)
        process.wait()
        process = start()
        kept, _ = consume("after-restart")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return {
        "produce_per_s": records / produce_s,
        "consume_per_s": got / consume_s,
        "consumed": got,
        "kept_after_kill": kept,
    }


def run(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    # the local S3's dummy credentials, for boto3 here and for the broker
    os.environ |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": LOCAL_DUMMY_SECRET}
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    print(f"broker memory://: {broker('memory://tansu/', None, args.records)}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        servers: list[tuple[str, Service]] = [
            ("moto (in memory)", start_moto(free_port())),
            ("local_stack.s3_server (on disk)", start_s3(free_port(), Path(folder) / "s3")),
        ]
        for name, service in servers:
            try:
                endpoint = f"http://127.0.0.1:{service.port}"
                print(f"{name}: {probe(endpoint, args.requests)}", flush=True)
                print(f"broker on {name}: {broker('s3://bench-broker/', endpoint, args.records)}", flush=True)
            finally:
                service.stop()


if __name__ == "__main__":
    run()
