"""`RemoteTier`: fetch and upload signed artifacts, with bounded network use and a shared back-off."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, Literal

import blake3

from .._core import is_key, log
from .._errors import CacheError, ConfigError
from ._artifact import (
    FORMAT_VERSION,
    MAGIC,
    MAX_METADATA,
    OBJECT_SUFFIX,
    PREAMBLE,
    SIGNATURE_SIZE,
    SIGNING_CONTEXT,
    ZSTD_LEVEL,
    RejectedArtifactError,
    RemoteDownError,
    decompress,
    encode_artifact,
    parse_metadata,
    read_exact,
)
from ._keys import first_line, key_id, load_signing_key, load_trusted_key
from ._lean import LeanTarget, lean_target, sigv4_headers
from ._settings import RemoteSettings, parse_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


CONNECT_TIMEOUT: Final = 2.0
READ_TIMEOUT: Final = 15.0  # per socket read: a stalled server costs at most this (times two attempts)
# A whole body must arrive within BODY_DEADLINE_BASE + size / BODY_MIN_RATE: below ~2 MB/s a local
# compile is faster than the download anyway.
BODY_DEADLINE_BASE: Final = 20.0
BODY_MIN_RATE: Final = 2 << 20
BACKOFF_SECONDS: Final = 60.0

# Remote endpoints that failed recently, shared by every RemoteTier (and so every cache) in the
# process: monotonic time until which they are skipped.
_down_until: dict[str, float] = {}
_down_lock = threading.Lock()

PutResult = Literal["uploaded", "exists", "failed"]


class LeanFallbackError(CacheError):
    """The direct GET met something only botocore handles (botocore then makes the request)."""


class RemoteTier:
    """Signed artifacts in ``s3://BUCKET[/PREFIX]``; endpoint and credentials from boto3's configuration.

    Constructing it loads the keys (cryptography) but neither boto3 nor botocore. A fetch is one
    GET: signed by us when the environment alone configures S3 (`lean_target`), else through a
    botocore client built at first use and reused; uploads always use botocore. Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        signing_key: str | os.PathLike[str] | None = None,
        trusted_keys: Sequence[str | os.PathLike[str]] = (),
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        for package in ("botocore", "zstandard", "cryptography"):
            if importlib.util.find_spec(package) is None:
                raise ConfigError(f"remote {url}: needs {package}; install it with `pip install 'wasmcache[s3]'`")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        self.signing_key_path = os.fspath(signing_key) if signing_key is not None else None
        self._signing_key = load_signing_key(self.signing_key_path) if self.signing_key_path is not None else None
        self._trusted: dict[str, Ed25519PublicKey] = {}
        for path in trusted_keys:
            public = load_trusted_key(os.fspath(path))
            self._trusted[key_id(public)] = public
        self._signing_key_id = key_id(self._signing_key.public_key()) if self._signing_key is not None else None
        if self._signing_key_id is not None and self._signing_key_id not in self._trusted:
            log.debug("wasmcache: the signing key %s (key id %s) is not among the trusted keys: this host uploads "
                      "artifacts it would not load itself", self.signing_key_path, self._signing_key_id)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        self._endpoint_id = f"{endpoint}|{self.bucket}"
        self._lean = lean_target(self.bucket)
        self._lean_failed = False
        self._ssl_context: Any = None
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._upload_refused: str | None = None
        self.rejected = 0  # present but invalid artifacts (bad or untrusted signature, wrong key or content)
        self.errors = 0  # network failures, timeouts, 5xx, refused requests
        self.skipped = 0  # requests not made because the remote is in its back-off period
        self.client_seconds: float | None = None  # building the S3 client, once (after the imports)

    @classmethod
    def from_settings(cls, settings: RemoteSettings) -> RemoteTier:
        return cls(settings.url, signing_key=settings.signing_key, trusted_keys=settings.trusted_keys)

    @property
    def can_upload(self) -> bool:
        return self._signing_key is not None

    @property
    def trusted_key_ids(self) -> list[str]:
        return sorted(self._trusted)

    def object_key(self, key: str, fingerprint: str) -> str:
        name = f"v{FORMAT_VERSION}/{fingerprint[:32]}/{key}{OBJECT_SUFFIX}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def __repr__(self) -> str:
        return f"RemoteTier({self.url!r}, can_upload={self.can_upload}, trusted={self.trusted_key_ids})"

    # --- fetch ---------------------------------------------------------------------------------------------

    def fetch(self, key: str, fingerprint: str) -> bytes | None:
        """The module bytes stored for `key`, if present, trusted and intact; else None (never raises)."""
        _check_hex(key, fingerprint)
        if self._skipping():
            return None
        name = self.object_key(key, fingerprint)
        try:
            return self._fetch(name, key, fingerprint)
        except RejectedArtifactError as exc:
            with self._count_lock:
                self.rejected += 1
            log.warning("wasmcache: rejected remote artifact s3://%s/%s: %s; compiling locally",
                        self.bucket, name, exc)
            return None
        except RemoteDownError as exc:
            self._went_down(f"fetching s3://{self.bucket}/{name}", str(exc))
            return None
        except Exception as exc:  # a load must never fail because of the remote tier
            self._went_down(f"fetching s3://{self.bucket}/{name}", f"unexpected {type(exc).__name__}: {exc}")
            return None

    def _fetch(self, name: str, key: str, fingerprint: str) -> bytes | None:
        started = time.monotonic()
        if self._lean is not None and not self._lean_failed:
            try:
                got = self._lean_get(self._lean, name)
            except LeanFallbackError as exc:
                # Something only botocore handles (a redirect, an odd error, another CA store):
                # this tier uses botocore from now on.
                log.debug("wasmcache: %s: direct GET gave %s; using botocore", self.url, exc)
                self._lean_failed = True
            else:
                if got is None:
                    return None
                response, length, connection = got
                try:
                    return self._read_body(response, length, key, fingerprint, started)
                finally:
                    connection.close()
        return self._fetch_botocore(name, key, fingerprint, started)

    def _fetch_botocore(self, name: str, key: str, fingerprint: str, started: float) -> bytes | None:
        client = self._get_client()
        if client is None:
            return None
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            response = client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if status == 403 and code == "AccessDenied":
                # S3 answers 403 for a missing object when the reader may not list the bucket.
                log.debug("wasmcache: s3://%s/%s: access denied (missing, or no s3:GetObject)", self.bucket, name)
                return None
            raise RemoteDownError(f"{code} (HTTP {status})") from None
        except (BotoCoreError, OSError) as exc:
            raise RemoteDownError(first_line(exc)) from None
        body = response["Body"]
        try:
            return self._read_body(body, int(response.get("ContentLength") or 0), key, fingerprint, started)
        finally:
            body.close()

    def _read_body(self, body: Any, length: int, key: str, fingerprint: str, started: float) -> bytes:
        try:
            return self._read_artifact(body, length, key, fingerprint, started)
        except (RejectedArtifactError, RemoteDownError):
            raise
        except Exception as exc:
            # Read timeouts and broken connections, as OSError or as http.client's, urllib3's or
            # botocore's own exception types (which share no base class).
            if isinstance(exc, OSError) or type(exc).__module__.startswith(("http.client", "urllib3", "botocore")):
                raise RemoteDownError(f"reading the body: {first_line(exc)}") from None
            raise

    def _lean_get(self, target: LeanTarget, name: str) -> tuple[Any, int, Any] | None:
        """GET `name` with http.client and a SigV4 signature of our own: (response, length, connection).

        None for a missing object; RemoteDownError when the server cannot be reached or stalls;
        LeanFallbackError for anything else (botocore then makes the request).
        """
        import http.client  # noqa: PLC0415

        connection, response = self._lean_request(target, "GET", target.path_prefix + "/" +
                                                  urllib.parse.quote(name, safe="/~"))
        length = response.getheader("Content-Length")
        if response.status == 200 and length is not None and length.isdigit():
            return response, int(length), connection
        try:
            detail = response.read(4096)
        except (OSError, http.client.HTTPException):
            detail = b""
        connection.close()
        if response.status == 404 and (not detail or b"<Code>NoSuchKey</Code>" in detail):
            return None
        code = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", detail)
        raise LeanFallbackError(f"HTTP {response.status} {code.group(1).decode() if code else ''}".strip())

    def _lean_request(self, target: LeanTarget, method: str, path: str) -> tuple[Any, Any]:
        import http.client  # noqa: PLC0415

        ssl_errors: tuple[type[BaseException], ...] = ()
        if target.scheme == "https":
            import ssl  # noqa: PLC0415

            ssl_errors = (ssl.SSLError,)
            if self._ssl_context is None:
                try:
                    self._ssl_context = ssl.create_default_context(cafile=target.ca_bundle)
                except (OSError, ssl.SSLError) as exc:
                    raise LeanFallbackError(f"CA bundle {target.ca_bundle}: {first_line(exc)}") from None
            connection: Any = http.client.HTTPSConnection(target.host, timeout=self.connect_timeout,
                                                          context=self._ssl_context)
        else:
            connection = http.client.HTTPConnection(target.host, timeout=self.connect_timeout)
        try:
            connection.connect()
            connection.sock.settimeout(self.read_timeout)
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for header, value in sigv4_headers(target, method, path).items():
                connection.putheader(header, value)
            connection.endheaders()
            return connection, connection.getresponse()
        except ssl_errors as exc:
            connection.close()
            raise LeanFallbackError(f"TLS error: {first_line(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise RemoteDownError(first_line(exc)) from None

    def _read_artifact(self, body: Any, length: int, key: str, fingerprint: str, started: float) -> bytes:
        deadline = started + BODY_DEADLINE_BASE + length / BODY_MIN_RATE
        if length < PREAMBLE.size + 2 + SIGNATURE_SIZE:
            raise RejectedArtifactError(f"object of {length} bytes is too short to be an artifact")
        magic, metadata_length = PREAMBLE.unpack(read_exact(body, PREAMBLE.size, deadline))
        if magic != MAGIC:
            raise RejectedArtifactError("not a wasmcache artifact (bad magic)")
        if not 2 <= metadata_length <= MAX_METADATA or length < PREAMBLE.size + metadata_length + SIGNATURE_SIZE:
            raise RejectedArtifactError(f"metadata length {metadata_length} is invalid")
        encoded = read_exact(body, metadata_length, deadline)
        signature = read_exact(body, SIGNATURE_SIZE, deadline)
        metadata = parse_metadata(encoded)
        self._verify_signature(metadata, encoded, signature)
        # Signed from here on, but maybe a signed artifact of another key, moved here: compare.
        if metadata["key"] != key or metadata["fingerprint"] != fingerprint:
            raise RejectedArtifactError("signed for another key or engine (object moved or copied)")
        if length != PREAMBLE.size + metadata_length + SIGNATURE_SIZE + metadata["compressed_size"]:
            raise RejectedArtifactError(f"object is {length} bytes, its signed metadata says otherwise")
        payload = read_exact(body, metadata["compressed_size"], deadline)
        if blake3.blake3(payload, max_threads=blake3.blake3.AUTO).hexdigest() != metadata["payload_digest"]:
            raise RejectedArtifactError("compressed payload does not match its signed digest")
        data = decompress(payload, metadata["size"])
        if blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() != metadata["content_digest"]:
            raise RejectedArtifactError("module content does not match its signed digest")
        log.info("wasmcache: fetched %s from %s (%d -> %d bytes, key id %s) in %.2f s", key[:16], self.url,
                 len(payload), len(data), metadata["key_id"], time.monotonic() - started)
        return data

    def verify_artifact(self, body: bytes, key: str, fingerprint: str) -> bytes:
        """The module in artifact `body` (held in memory) if valid for `key`; else RejectedArtifactError."""
        _check_hex(key, fingerprint)
        try:
            return self._read_artifact(io.BytesIO(body), len(body), key, fingerprint, time.monotonic())
        except RemoteDownError as exc:  # a short body, here: the artifact is truncated
            raise RejectedArtifactError(str(exc)) from None

    def _verify_signature(self, metadata: dict[str, Any], encoded: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        public = self._trusted.get(metadata["key_id"])
        if public is None:
            raise RejectedArtifactError(f"signed by an untrusted key (key id {metadata['key_id']})")
        try:
            public.verify(signature, SIGNING_CONTEXT + encoded)
        except InvalidSignature:
            raise RejectedArtifactError(f"invalid signature (claims key id {metadata['key_id']})") from None

    # --- upload --------------------------------------------------------------------------------------------

    def upload(self, key: str, fingerprint: str, data: bytes) -> bool:
        """Compress, sign and put `data` unless an object already exists; True if this call stored it."""
        return self.put(key, fingerprint, data) == "uploaded"

    def put(self, key: str, fingerprint: str, data: bytes | bytearray | memoryview) -> PutResult:
        """Like `upload`, telling "exists" (someone stored it first) from "failed" (logged, never raised)."""
        _check_hex(key, fingerprint)
        if self._signing_key is None:
            raise ConfigError(f"remote {self.url}: uploading needs a signing key")
        if self._upload_refused is not None or self._skipping():
            return "failed"
        name = self.object_key(key, fingerprint)
        try:
            return self._put(name, key, fingerprint, data)
        except RemoteDownError as exc:
            self._went_down(f"uploading s3://{self.bucket}/{name}", str(exc))
            return "failed"
        except Exception as exc:  # the module is compiled and published locally: never fail the load
            self._went_down(f"uploading s3://{self.bucket}/{name}", f"unexpected {type(exc).__name__}: {exc}")
            return "failed"

    def build_artifact(self, key: str, fingerprint: str, data: bytes | bytearray | memoryview) -> bytes:
        """The signed object body for `data` (what `upload` puts)."""
        import zstandard  # noqa: PLC0415

        from .._core import wasmtime_version  # noqa: PLC0415

        if self._signing_key is None or self._signing_key_id is None:
            raise ConfigError(f"remote {self.url}: signing needs a signing key")
        payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compress(data)
        metadata = {
            "format": FORMAT_VERSION,
            "key": key,
            "fingerprint": fingerprint,
            "content_digest": blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(),
            "size": len(data),
            "compression": "zstd",
            "compressed_size": len(payload),
            "payload_digest": blake3.blake3(payload, max_threads=blake3.blake3.AUTO).hexdigest(),
            "wasmtime_version": wasmtime_version()[:64],
            "created": int(time.time()),
            "key_id": self._signing_key_id,
        }
        return encode_artifact(metadata, self._signing_key, payload)

    def _put(self, name: str, key: str, fingerprint: str, data: bytes | bytearray | memoryview) -> PutResult:
        client = self._get_client()
        if client is None:
            return "failed"
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        started = time.monotonic()
        body = self.build_artifact(key, fingerprint, data)
        try:
            client.put_object(Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*",
                              ContentType="application/octet-stream")
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                log.debug("wasmcache: s3://%s/%s already exists (another host uploaded it)", self.bucket, name)
                return "exists"
            if status is not None and status >= 500:
                raise RemoteDownError(f"{code} (HTTP {status})") from None
            # 4xx: no permission to write, no such bucket ... will not fix itself in this process.
            with self._count_lock:
                self.errors += 1
            self._upload_refused = f"{code} (HTTP {status})"
            log.warning("wasmcache: cannot upload to %s: %s; not uploading from this cache any more",
                        self.url, self._upload_refused)
            return "failed"
        except (BotoCoreError, OSError) as exc:
            raise RemoteDownError(first_line(exc)) from None
        log.info("wasmcache: uploaded %s to %s (%d bytes) in %.2f s", key[:16], self.url, len(body),
                 time.monotonic() - started)
        return "uploaded"

    # --- client and back-off ---------------------------------------------------------------------------

    def _get_client(self) -> Any:
        """The botocore S3 client, built once (None if it cannot be built: logged, remote marked down)."""
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._make_client()
                except Exception as exc:  # a broken profile or region: the local cache still works
                    self._went_down(f"setting up the S3 client for {self.url}", first_line(exc))
                    return None
        return self._client

    def _make_client(self) -> Any:
        # botocore's session, not boto3's wrapper: the same configuration chain (environment,
        # ~/.aws/config profiles, AWS_ENDPOINT_URL, credential providers) without importing boto3
        # and s3transfer. Only after a local miss: import + client cost ~0.2 s.
        import botocore.session  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        started = time.perf_counter()

        config = Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            # Our signature covers the content; extra checksums only break S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=16,
        )
        client = botocore.session.Session().create_client("s3", config=config)
        self.client_seconds = time.perf_counter() - started
        return client

    def _skipping(self) -> bool:
        with _down_lock:
            until = _down_until.get(self._endpoint_id)
        if until is None:
            return False
        if time.monotonic() < until:
            with self._count_lock:
                self.skipped += 1
            return True
        with _down_lock:
            if _down_until.get(self._endpoint_id) == until:
                del _down_until[self._endpoint_id]
        return False

    def _went_down(self, what: str, reason: str) -> None:
        with self._count_lock:
            self.errors += 1
        with _down_lock:
            already = _down_until.get(self._endpoint_id, 0.0) > time.monotonic()
            _down_until[self._endpoint_id] = time.monotonic() + self.backoff
        if not already:  # one warning per outage, however many caches and threads hit it
            log.warning("wasmcache: remote %s unavailable (%s: %s); compiling locally and not trying it for %.0f s",
                        self.url, what, reason, self.backoff)


def _check_hex(key: str, fingerprint: str) -> None:
    if not is_key(key) or not is_key(fingerprint):
        raise ValueError("key and fingerprint must be 64 lowercase hex digits")


def _error_code(exc: Any) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None
