"""Bytes at a URI: a local folder or ``s3://bucket/prefix`` (the only I/O the stores need)."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class BlobStore(Protocol):
    uri: str

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str: ...


class LocalBlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def get(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.exists() else None

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written file
        return str(path)


class S3BlobStore:
    def __init__(self, uri: str, client: "S3Client | None" = None) -> None:
        parsed = urlparse(uri)
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = client

    @property
    def client(self) -> "S3Client":
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def get(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is no such key.

        S3 answers a missing key with 403, not 404, to a caller without ``s3:ListBucket`` on the
        whole bucket; our roles may list their own prefix only (docs/infra.md, least privilege).
        So a 403 is checked with a listing of that key (allowed by the prefix grant): absent ->
        None, present -> the denial was real and is raised."""
        from botocore.exceptions import ClientError

        key = self._key(name)
        try:
            response: Any = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"AccessDenied", "403"}:
                raise
            if self._exists(key):
                raise
            return None
        data: bytes = response["Body"].read()
        return data

    def _exists(self, key: str) -> bool:
        listed: Any = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        return any(item.get("Key") == key for item in listed.get("Contents", []))

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, ContentType=content_type)
        return f"s3://{self.bucket}/{self._key(name)}"


def open_blob_store(uri: str) -> BlobStore:
    if uri.startswith("s3://"):
        return S3BlobStore(uri)
    return LocalBlobStore(uri.removeprefix("file://"))
