"""S3BlobStore.get: a missing key is None even when S3 answers 403 (no bucket-wide ListBucket)."""

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from fraud_adapters.blobs import S3BlobStore

BUCKET = "fraudsys-dev-models-123456789012-us-east-1"


@pytest.fixture
def stubbed() -> Iterator[tuple[S3BlobStore, Stubber]]:
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # pragma: allowlist secret
    )
    with Stubber(client) as stubber:
        yield S3BlobStore(f"s3://{BUCKET}/registry", client=client), stubber
        stubber.assert_no_pending_responses()


def test_a_403_on_a_missing_key_is_none(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    # given a role that may list its prefix only: S3 hides whether the key exists (403)
    store, stubber = stubbed
    key = "registry/fraudsys/versions/3/baseline.ubj"
    stubber.add_client_error("get_object", "AccessDenied", http_status_code=403)
    stubber.add_response("list_objects_v2", {"KeyCount": 0}, {"Bucket": BUCKET, "Prefix": key, "MaxKeys": 1})
    # then the listing of that key (allowed by the prefix grant) shows it is missing
    assert store.get("fraudsys/versions/3/baseline.ubj") is None


def test_a_403_on_an_existing_key_is_raised(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stubber = stubbed
    key = "registry/fraudsys/champion.json"
    stubber.add_client_error("get_object", "AccessDenied", http_status_code=403)
    stubber.add_response(
        "list_objects_v2",
        {"KeyCount": 1, "Contents": [{"Key": key}]},
        {"Bucket": BUCKET, "Prefix": key, "MaxKeys": 1},
    )
    with pytest.raises(Exception, match="AccessDenied"):
        store.get("fraudsys/champion.json")


def test_a_404_is_none_without_a_listing(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    assert store.get("fraudsys/champion.json") is None


def test_other_errors_are_raised(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", "SlowDown", http_status_code=503)
    with pytest.raises(Exception, match="SlowDown"):
        store.get("fraudsys/champion.json")
