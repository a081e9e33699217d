"""The shared remote tier (issue #5): signed, compressed artifacts in an S3 bucket.

A compiled module is native code that wasmtime maps and runs without validating it, so a shared
bucket is treated as hostile storage: an artifact is used only if it carries an Ed25519 signature
by a key the reader trusts, over metadata that names this very key, engine fingerprint, content
digest and size. A writable bucket alone cannot get code run.

One object per key, fetched with one GET::

    s3://BUCKET/PREFIX/v1/<fingerprint[:32]>/<key>.cwasm.zst

    offset 0       8 bytes   MAGIC  b"\\x89WCACHE\\n" (high bit and newline catch text-mode mangling)
    offset 8       4 bytes   H: length of the metadata, big-endian, 2 <= H <= 16 KiB
    offset 12      H bytes   metadata: canonical JSON (sorted keys, no spaces, ASCII), exactly the fields
                             of `_FIELDS` (key, fingerprint, content_digest, size, payload_digest, ...)
    offset 12+H    64 bytes  Ed25519 signature over SIGNING_CONTEXT + metadata
    offset 76+H    rest      payload: one zstd frame of exactly `compressed_size` bytes

A reader checks, in order and before any work it can skip: magic and length, canonical metadata,
the signing key is trusted, the signature, key and fingerprint equal what it asked for, the object
length, the payload digest, the frame's declared size, and after decompression (bounded by the
signed size: no zip bombs) the size and blake3 of the module. Any failure = one warning, `rejected`
+= 1, None: the cache compiles locally.

The network is bounded everywhere: connect and read timeouts, at most one retry, and a deadline for
reading a body. A failure (connection refused, timeout, 5xx, bad credentials) logs one warning and
marks the remote down for `BACKOFF_SECONDS`, for every cache in the process; meanwhile fetch and
upload return at once. Nothing of this is imported until a local miss; a consumer configured by
environment variables never imports botocore at all (~0.2 s of a remote hit, see `lean_target`).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import os
import re
import stat
import struct
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import blake3

from ._errors import ConfigError
from ._layout import KEY_RE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger("wasmcache")

FORMAT_VERSION: Final = 1
MAGIC: Final = b"\x89WCACHE\n"
SIGNING_CONTEXT: Final = b"wasmcache-remote-artifact-v1\0"
OBJECT_SUFFIX: Final = ".cwasm.zst"
SIGNATURE_SIZE: Final = 64
_PREAMBLE: Final = struct.Struct(">8sI")
MAX_METADATA: Final = 16 << 10
MAX_MODULE_SIZE: Final = 8 << 30  # larger than any cwasm seen (152 MB); bounds a signed claim too
_ZSTD_LEVEL: Final = 3

CONNECT_TIMEOUT: Final = 2.0
READ_TIMEOUT: Final = 15.0  # per socket read: a stalled server costs at most this (times two attempts)
# A whole body must arrive within BODY_DEADLINE_BASE + size / BODY_MIN_RATE: below ~2 MB/s a local
# compile is faster than the download anyway.
BODY_DEADLINE_BASE: Final = 20.0
BODY_MIN_RATE: Final = 2 << 20
BACKOFF_SECONDS: Final = 60.0
_READ_CHUNK: Final = 1 << 20

_FIELDS: Final = frozenset({
    "format", "key", "fingerprint", "content_digest", "size", "compression", "compressed_size",
    "payload_digest", "wasmtime_version", "created", "key_id",
})
_KEY_ID_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_BUCKET_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")

# Remote endpoints that failed recently, shared by every RemoteTier (and so every cache) in the
# process: monotonic time until which they are skipped.
_down_until: dict[str, float] = {}
_down_lock = threading.Lock()

PutResult = Literal["uploaded", "exists", "failed"]


class RejectedArtifactError(Exception):
    """A remote object that must not be loaded (internal: turned into `rejected` + one warning)."""


class _RemoteDownError(Exception):
    """The remote did not answer in time or answered 5xx (internal: turned into a back-off)."""


# --- keys -----------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (blake3 of its raw 32 bytes), stored in each artifact."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return blake3.blake3(b"wasmcache-key-id-v1\0" + raw).hexdigest()[:32]


def _read_key_file(path: str, role: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 10)
    except FileNotFoundError:
        raise ConfigError(f"{role} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{role} {path}: is a directory, expected a PEM key file") from None
    except OSError as exc:
        raise ConfigError(f"{role} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data and not data.startswith(b"ssh-ed25519 "):
        raise ConfigError(f"{role} {path}: not a PEM key file (expected -----BEGIN ...-----)")
    return data


def load_signing_key(path: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file `path`; ConfigError naming the file and the problem."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    role = "signing key"
    data = _read_key_file(path, role)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{role} {path}: not a private key (a signing key is the .pem that `wasmcache keygen` "
                          "writes; the .pub goes to trusted keys)")
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key: Any = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{role} {path}: the key is encrypted; use an unencrypted key file (mode 0600)") from None
    except Exception as exc:  # ValueError, UnsupportedAlgorithm: anything else is a bad file
        raise ConfigError(f"{role} {path}: not a valid PEM private key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{role} {path}: not an Ed25519 key ({type(key).__name__.removeprefix('_')}); "
                          "create one with `wasmcache keygen`")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("wasmcache: signing key %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return key


def load_trusted_key(path: str) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file `path`; ConfigError naming the file and the problem."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    role = "trusted key"
    data = _read_key_file(path, role)
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"{role} {path}: is a private key; trust its public half (the .pub file) instead")
    try:
        if data.startswith(b"ssh-ed25519 "):
            key: Any = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm
        raise ConfigError(f"{role} {path}: not a valid PEM public key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{role} {path}: not an Ed25519 key ({type(key).__name__.removeprefix('_')}); "
                          "create one with `wasmcache keygen`")
    return key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without surrounding slashes) of ``s3://BUCKET[/PREFIX]``."""
    if not url.startswith("s3://"):
        raise ConfigError(f"remote {url!r}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(f"remote {url!r}: {bucket!r} is not a valid bucket name")
    prefix = prefix.strip("/")
    if any(c in prefix for c in "\0\r\n") or "//" in prefix:
        raise ConfigError(f"remote {url!r}: invalid prefix {prefix!r}")
    return bucket, prefix


# --- the artifact format ---------------------------------------------------------------------------


def canonical_metadata(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_artifact(metadata: dict[str, Any], signing_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """The object body: preamble, metadata, signature, payload (see the module docstring)."""
    encoded = canonical_metadata(metadata)
    signature = signing_key.sign(SIGNING_CONTEXT + encoded)
    return b"".join((_PREAMBLE.pack(MAGIC, len(encoded)), encoded, signature, payload))


def parse_metadata(encoded: bytes) -> dict[str, Any]:
    """Strictly parse signed-to-be metadata; RejectedArtifactError for anything unexpected."""
    try:
        metadata = json.loads(encoded.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RejectedArtifactError("metadata is not JSON") from None
    if not isinstance(metadata, dict) or set(metadata) != _FIELDS:
        raise RejectedArtifactError("metadata has missing or unknown fields")
    if canonical_metadata(metadata) != encoded:
        raise RejectedArtifactError("metadata is not canonically encoded")
    if metadata["format"] != FORMAT_VERSION or metadata["compression"] != "zstd":
        raise RejectedArtifactError(f"unsupported artifact format {metadata['format']!r}/{metadata['compression']!r}")
    for name in ("key", "fingerprint", "content_digest", "payload_digest"):
        if not isinstance(metadata[name], str) or not KEY_RE.match(metadata[name]):
            raise RejectedArtifactError(f"metadata field {name} is malformed")
    if not isinstance(metadata["key_id"], str) or not _KEY_ID_RE.match(metadata["key_id"]):
        raise RejectedArtifactError("metadata field key_id is malformed")
    for name, low, high in (("size", 1, MAX_MODULE_SIZE), ("compressed_size", 1, MAX_MODULE_SIZE + (1 << 20)),
                            ("created", 0, 1 << 40)):
        value = metadata[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise RejectedArtifactError(f"metadata field {name} is malformed")
    if not isinstance(metadata["wasmtime_version"], str) or len(metadata["wasmtime_version"]) > 64:
        raise RejectedArtifactError("metadata field wasmtime_version is malformed")
    return metadata


# --- a lean GET: no botocore on the consumer's hot path -----------------------------------------


class LeanTarget(NamedTuple):
    """Where and how to sign a GET when the environment alone configures S3 (see `lean_target`)."""

    scheme: str
    host: str  # host[:port], sent and signed as the Host header
    path_prefix: str  # "/BUCKET" (path style) or "" (virtual-hosted: the bucket is in the host)
    region: str
    access_key: str
    secret_key: str
    session_token: str | None
    ca_bundle: str | None = None  # https: the CA file botocore would verify with


class _LeanFallbackError(Exception):
    """The direct GET met something only botocore handles (internal)."""


# Any of these means botocore's configuration chain could pick another endpoint, credentials or
# transport than the environment variables say: the lean GET steps aside.
_BOTOCORE_SETTINGS: Final = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)
_REGION_RE: Final = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")
_VIRTUAL_HOST_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_EMPTY_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def lean_target(bucket: str, environ: Mapping[str, str] | None = None) -> LeanTarget | None:
    """The GET target botocore would use, when environment variables alone decide it; else None.

    Importing botocore and building a client costs ~0.2 s, most of a remote hit. When credentials,
    region and endpoint all come from the environment (CI runners, containers) and no profile,
    config file, proxy or special endpoint mode is involved, a consumer signs its one GET itself
    (SigV4, the same URL botocore builds: path style for a custom endpoint, virtual-hosted on AWS).
    Uploads, and everything else, go through botocore. ``WASMCACHE_REMOTE_LEAN=0`` turns this off.
    """
    env = os.environ if environ is None else environ
    if env.get("WASMCACHE_REMOTE_LEAN", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not access_key or not secret_key or not region or not _REGION_RE.match(region):
        return None
    if any(env.get(name) for name in _BOTOCORE_SETTINGS):
        return None
    if os.path.exists(os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")):
        return None  # a profile may set endpoint_url, region or s3 addressing_style: botocore reads it
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
                or parts.query or parts.fragment or "@" in parts.netloc):
            return None
        scheme, host, path_prefix = parts.scheme, parts.netloc, f"/{bucket}"
    elif region.startswith(("cn-", "us-iso", "eu-isoe")):
        return None  # other partitions, other domains
    elif _VIRTUAL_HOST_BUCKET_RE.match(bucket):
        scheme, host, path_prefix = "https", f"{bucket}.s3.{region}.amazonaws.com", ""
    else:
        scheme, host, path_prefix = "https", f"s3.{region}.amazonaws.com", f"/{bucket}"
    ca_bundle = None
    if scheme == "https":
        ca_bundle = env.get("AWS_CA_BUNDLE") or _botocore_default_ca_bundle()
        if ca_bundle is None:
            return None
    return LeanTarget(scheme, host, path_prefix, region, access_key, secret_key, token, ca_bundle)


def _botocore_default_ca_bundle() -> str | None:
    """What botocore verifies TLS with by default: certifi's bundle if installed, else its own cacert.pem."""
    try:
        certifi: Any = importlib.import_module("certifi")
    except ImportError:
        spec = importlib.util.find_spec("botocore")
        if spec is None or spec.origin is None:
            return None
        bundle = os.path.join(os.path.dirname(spec.origin), "cacert.pem")
        return bundle if os.path.exists(bundle) else None
    return str(certifi.where())


def sigv4_headers(target: LeanTarget, method: str, path: str, now: float | None = None) -> dict[str, str]:
    """Headers of an AWS Signature Version 4 request without a body (path already URI-encoded)."""
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    scope = f"{amz_date[:8]}/{target.region}/s3/aws4_request"
    headers = {"host": target.host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": amz_date}
    if target.session_token:
        headers["x-amz-security-token"] = target.session_token
    names = sorted(headers)
    signed_headers = ";".join(names)
    canonical_request = "\n".join([
        method, path, "", *(f"{name}:{headers[name]}" for name in names), "", signed_headers, _EMPTY_SHA256,
    ])
    string_to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest(),
    ])
    signing_key = f"AWS4{target.secret_key}".encode()
    for part in (amz_date[:8], target.region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={target.access_key}/{scope}, "
                                f"SignedHeaders={signed_headers}, Signature={signature}")
    return headers


# --- the tier ------------------------------------------------------------------------------------------


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
        except _RemoteDownError as exc:
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
            except _LeanFallbackError as exc:
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
            raise _RemoteDownError(f"{code} (HTTP {status})") from None
        except (BotoCoreError, OSError) as exc:
            raise _RemoteDownError(_first_line(exc)) from None
        body = response["Body"]
        try:
            return self._read_body(body, int(response.get("ContentLength") or 0), key, fingerprint, started)
        finally:
            body.close()

    def _read_body(self, body: Any, length: int, key: str, fingerprint: str, started: float) -> bytes:
        try:
            return self._read_artifact(body, length, key, fingerprint, started)
        except (RejectedArtifactError, _RemoteDownError):
            raise
        except Exception as exc:
            # Read timeouts and broken connections, as OSError or as http.client's, urllib3's or
            # botocore's own exception types (which share no base class).
            if isinstance(exc, OSError) or type(exc).__module__.startswith(("http.client", "urllib3", "botocore")):
                raise _RemoteDownError(f"reading the body: {_first_line(exc)}") from None
            raise

    def _lean_get(self, target: LeanTarget, name: str) -> tuple[Any, int, Any] | None:
        """GET `name` with http.client and a SigV4 signature of our own: (response, length, connection).

        None for a missing object; _RemoteDownError when the server cannot be reached or stalls;
        _LeanFallbackError for anything else (botocore then makes the request).
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
        raise _LeanFallbackError(f"HTTP {response.status} {code.group(1).decode() if code else ''}".strip())

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
                    raise _LeanFallbackError(f"CA bundle {target.ca_bundle}: {_first_line(exc)}") from None
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
            raise _LeanFallbackError(f"TLS error: {_first_line(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _RemoteDownError(_first_line(exc)) from None

    def _read_artifact(self, body: Any, length: int, key: str, fingerprint: str, started: float) -> bytes:
        deadline = started + BODY_DEADLINE_BASE + length / BODY_MIN_RATE
        if length < _PREAMBLE.size + 2 + SIGNATURE_SIZE:
            raise RejectedArtifactError(f"object of {length} bytes is too short to be an artifact")
        magic, metadata_length = _PREAMBLE.unpack(_read_exact(body, _PREAMBLE.size, deadline))
        if magic != MAGIC:
            raise RejectedArtifactError("not a wasmcache artifact (bad magic)")
        if not 2 <= metadata_length <= MAX_METADATA or length < _PREAMBLE.size + metadata_length + SIGNATURE_SIZE:
            raise RejectedArtifactError(f"metadata length {metadata_length} is invalid")
        encoded = _read_exact(body, metadata_length, deadline)
        signature = _read_exact(body, SIGNATURE_SIZE, deadline)
        metadata = parse_metadata(encoded)
        self._verify_signature(metadata, encoded, signature)
        # Signed from here on, but maybe a signed artifact of another key, moved here: compare.
        if metadata["key"] != key or metadata["fingerprint"] != fingerprint:
            raise RejectedArtifactError("signed for another key or engine (object moved or copied)")
        if length != _PREAMBLE.size + metadata_length + SIGNATURE_SIZE + metadata["compressed_size"]:
            raise RejectedArtifactError(f"object is {length} bytes, its signed metadata says otherwise")
        payload = _read_exact(body, metadata["compressed_size"], deadline)
        if blake3.blake3(payload, max_threads=blake3.blake3.AUTO).hexdigest() != metadata["payload_digest"]:
            raise RejectedArtifactError("compressed payload does not match its signed digest")
        data = _decompress(payload, metadata["size"])
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
        except _RemoteDownError as exc:  # a short body, here: the artifact is truncated
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
        except _RemoteDownError as exc:
            self._went_down(f"uploading s3://{self.bucket}/{name}", str(exc))
            return "failed"
        except Exception as exc:  # the module is compiled and published locally: never fail the load
            self._went_down(f"uploading s3://{self.bucket}/{name}", f"unexpected {type(exc).__name__}: {exc}")
            return "failed"

    def build_artifact(self, key: str, fingerprint: str, data: bytes | bytearray | memoryview) -> bytes:
        """The signed object body for `data` (what `upload` puts)."""
        import zstandard  # noqa: PLC0415

        from ._engine import _wasmtime_version  # noqa: PLC0415

        if self._signing_key is None or self._signing_key_id is None:
            raise ConfigError(f"remote {self.url}: signing needs a signing key")
        payload = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, threads=-1).compress(data)
        metadata = {
            "format": FORMAT_VERSION,
            "key": key,
            "fingerprint": fingerprint,
            "content_digest": blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(),
            "size": len(data),
            "compression": "zstd",
            "compressed_size": len(payload),
            "payload_digest": blake3.blake3(payload, max_threads=blake3.blake3.AUTO).hexdigest(),
            "wasmtime_version": _wasmtime_version()[:64],
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
                raise _RemoteDownError(f"{code} (HTTP {status})") from None
            # 4xx: no permission to write, no such bucket ... will not fix itself in this process.
            with self._count_lock:
                self.errors += 1
            self._upload_refused = f"{code} (HTTP {status})"
            log.warning("wasmcache: cannot upload to %s: %s; not uploading from this cache any more",
                        self.url, self._upload_refused)
            return "failed"
        except (BotoCoreError, OSError) as exc:
            raise _RemoteDownError(_first_line(exc)) from None
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
                    self._went_down(f"setting up the S3 client for {self.url}", _first_line(exc))
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
    if not KEY_RE.match(key) or not KEY_RE.match(fingerprint):
        raise ValueError("key and fingerprint must be 64 lowercase hex digits")


def _error_code(exc: Any) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def _read_exact(body: Any, size: int, deadline: float) -> bytes:
    """Exactly `size` bytes of a streaming body, or _RemoteDownError (short body, deadline)."""
    if size <= _READ_CHUNK:
        chunk = body.read(size)
        if len(chunk) == size:
            return bytes(chunk)
        parts = [chunk]
        got = len(chunk)
    else:
        parts, got = [], 0
    while got < size:
        if time.monotonic() > deadline:
            raise _RemoteDownError(f"body not received in time ({got} of {size} bytes)")
        chunk = body.read(min(size - got, _READ_CHUNK))
        if not chunk:
            raise _RemoteDownError(f"connection closed after {got} of {size} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _decompress(payload: bytes, size: int) -> bytes:
    import zstandard  # noqa: PLC0415

    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise RejectedArtifactError("payload is not a zstd frame") from None
    if declared not in (-1, size):
        raise RejectedArtifactError(f"zstd frame declares {declared} bytes, signed size is {size}")
    try:
        data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise RejectedArtifactError(f"payload does not decompress: {exc}") from None
    if len(data) != size:
        raise RejectedArtifactError(f"payload decompresses to {len(data)} bytes, signed size is {size}")
    return data
