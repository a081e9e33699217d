"""The artifact format of the remote tier (see the package docstring): encode, parse, read, decompress."""

from __future__ import annotations

import json
import re
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from .._core import is_key
from .._errors import CacheError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class RejectedArtifactError(CacheError):
    """A remote object that must not be loaded (turned into `rejected` + one warning)."""


class RemoteDownError(CacheError):
    """The remote did not answer in time or answered 5xx (turned into a back-off)."""

FORMAT_VERSION: Final = 1
MAGIC: Final = b"\x89WCACHE\n"
SIGNING_CONTEXT: Final = b"wasmcache-remote-artifact-v1\0"
OBJECT_SUFFIX: Final = ".cwasm.zst"
SIGNATURE_SIZE: Final = 64
PREAMBLE: Final = struct.Struct(">8sI")
MAX_METADATA: Final = 16 << 10
MAX_MODULE_SIZE: Final = 8 << 30  # larger than any cwasm seen (152 MB); bounds a signed claim too
ZSTD_LEVEL: Final = 3
_READ_CHUNK: Final = 1 << 20

_FIELDS: Final = frozenset({
    "format", "key", "fingerprint", "content_digest", "size", "compression", "compressed_size",
    "payload_digest", "wasmtime_version", "created", "key_id",
})
_KEY_ID_RE: Final = re.compile(r"^[0-9a-f]{32}$")


def canonical_metadata(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_artifact(metadata: dict[str, Any], signing_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """The object body: preamble, metadata, signature, payload (see the module docstring)."""
    encoded = canonical_metadata(metadata)
    signature = signing_key.sign(SIGNING_CONTEXT + encoded)
    return b"".join((PREAMBLE.pack(MAGIC, len(encoded)), encoded, signature, payload))


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
        if not isinstance(metadata[name], str) or not is_key(metadata[name]):
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


def read_exact(body: Any, size: int, deadline: float) -> bytes:
    """Exactly `size` bytes of a streaming body, or RemoteDownError (short body, deadline)."""
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
            raise RemoteDownError(f"body not received in time ({got} of {size} bytes)")
        chunk = body.read(min(size - got, _READ_CHUNK))
        if not chunk:
            raise RemoteDownError(f"connection closed after {got} of {size} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def decompress(payload: bytes, size: int) -> bytes:
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
