"""The shared remote tier: signed, compressed artifacts in an S3 bucket.

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
Modules: `_settings` (what the user configured: light, read by every ModuleCache), `_keys`,
`_artifact` (the format above), `_lean` (the direct GET), `_tier` (fetch, upload, back-off).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._tier import PutResult, RemoteTier

__all__ = ["PutResult", "RemoteTier"]


def __getattr__(name: str) -> object:
    # The tier (and through it cryptography, zstandard, botocore) loads only when a remote is used:
    # every ModuleCache imports `_settings` from this package.
    if name in __all__:
        from . import _tier  # noqa: PLC0415

        return getattr(_tier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
