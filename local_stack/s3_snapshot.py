"""The local S3 (moto, in memory) kept on disk across ``fraudsys local up`` restarts.

moto's server holds objects in memory only (its request recorder replays every call ever made,
reads included, so it grows without bound). Instead the stack saves the buckets it owns to a
folder when it goes down (``save``) and puts them back when it comes up (``restore``), before
anything reads them. The folder mirrors the keys (``<folder>/<bucket>/<key>``), so the lake
can also be read there directly; ``save`` writes a fresh copy next to the old one and swaps
them, so a crash while saving leaves the previous snapshot whole.
"""

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def client(endpoint: str) -> "S3Client":
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def save(endpoint: str, folder: Path, buckets: Iterable[str]) -> int:
    """Copy every object of ``buckets`` to ``folder``; returns the number of objects saved."""
    s3 = client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    fresh = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    saved = 0
    for bucket in buckets:
        if bucket not in existing:
            continue
        (fresh / bucket).mkdir()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                path = (fresh / bucket / key).resolve()
                if key.endswith("/") or not path.is_relative_to((fresh / bucket).resolve()):
                    continue  # folder markers and keys that would leave the folder
                path.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(path))
                saved += 1
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return saved


def restore(endpoint: str, folder: Path) -> int:
    """Create the saved buckets and upload their objects; returns the number of objects restored."""
    if not folder.is_dir():
        return 0
    s3 = client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    restored = 0
    for bucket_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if bucket_dir.name not in existing:
            s3.create_bucket(Bucket=bucket_dir.name)
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
            key = path.relative_to(bucket_dir).as_posix()
            s3.upload_file(str(path), bucket_dir.name, key)
            restored += 1
    return restored
