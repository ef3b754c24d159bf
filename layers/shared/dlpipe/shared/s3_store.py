"""The S3 object store, through boto3: the same interface as the directory store (dlpipe.shared.store)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from dlpipe.shared.keys import (
    MAX_KEY_BYTES,
    InvalidKey,
    KeyNotFound,
    StoreError,
    quote_key,
    validate_key,
    validate_prefix,
)
from dlpipe.shared.store import STORE_BYTES, ObjectStore


class S3Store(ObjectStore):
    """S3 through boto3; honours AWS_PROFILE, AWS_REGION and AWS_ENDPOINT_URL.

    boto3 reads AWS_ENDPOINT_URL itself, so the same code runs against AWS, moto,
    MinIO or LocalStack.
    """

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        if not bucket:
            raise StoreError("S3 URL needs a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self):
        # Created lazily so that a store can be pickled into worker processes.
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3")
        return self._client

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def _key(self, key: str) -> str:
        full = f"{self.prefix}/{validate_key(key)}" if self.prefix else validate_key(key)
        if len(full.encode()) > MAX_KEY_BYTES:  # with the prefix
            raise InvalidKey(f"key {quote_key(key)} under the prefix {self.prefix!r} makes {len(full.encode())} bytes "
                             f"of UTF-8; S3 takes at most {MAX_KEY_BYTES}")
        return full

    def _is_missing(self, err) -> bool:
        code = err.response.get("Error", {}).get("Code", "")
        return code in ("NoSuchKey", "404", "NotFound")

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            data = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if self._is_missing(err):
                raise KeyNotFound(key, self.url) from None
            raise
        STORE_BYTES.add(read=len(data))
        return data

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        STORE_BYTES.add(written=len(data))

    def create(self, key: str, data: bytes) -> bool:
        """S3's conditional write (If-None-Match: *): 412 if the key exists, 409 if another such write races."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        STORE_BYTES.add(written=len(data))
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if self._is_missing(err):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))
