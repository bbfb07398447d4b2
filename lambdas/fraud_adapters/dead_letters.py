"""Dead-letter store: poison stream records kept with the reason, one JSON object each."""

import base64
import json
import time
import uuid
from dataclasses import asdict, dataclass

from fraud_adapters.blobs import BlobStore


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str  # e.g. "kafka:fraudsys.transactions-0@42" or "kinesis:<sequence>"
    reason: str
    payload_b64: str

    @classmethod
    def of(cls, source: str, reason: str, payload: bytes) -> "DeadLetter":
        return cls(source=source, reason=reason, payload_b64=base64.b64encode(payload).decode())


class DeadLetterStore:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def put(self, letter: DeadLetter) -> str:
        day = time.strftime("%Y/%m/%d", time.gmtime())
        name = f"dead-letters/{day}/{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        body = json.dumps({**asdict(letter), "stored_at": time.time()}).encode()
        return self.blobs.put(name, body, "application/json")
