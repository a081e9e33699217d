"""From an input to its cache key: the wasm's digest, the key, and digests remembered by file identity.

A hit by path must not re-read a 50 MB wasm: its digest is remembered by the file's identity
(device, inode, size, mtime_ns, ctime_ns) in this process and under ROOT/digests/ for the next
one, so a hit costs a stat and one small read.
"""

from __future__ import annotations

import os
import stat
from _thread import allocate_lock
from typing import TYPE_CHECKING, Final

import blake3

from ._errors import SourceError
from ._fingerprint import fingerprint_of_section
from ._fs import read_small_file, write_atomically
from ._layout import DIGESTS_DIR
from ._log import log
from ._record import Identity

if TYPE_CHECKING:
    from pathlib import Path

    from ._layout import Kind

Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_DIGEST_CHUNK: Final = 8 << 20
_DIGEST_THREADS: Final = 4


def wasm_digest(data: bytes | bytearray | memoryview) -> str:
    """The input's digest: blake3 over the blake3s of its 8 MiB chunks (and its length).

    The chunks are hashed on up to 4 threads (blake3 releases the GIL). blake3's own
    multithreading starts a thread pool on first use, which in a fresh process costs as much as
    it saves (7-14 ms for 49 MB either way, measured); plain threads hash it in ~6.5 ms on 2
    cores. Fixed chunks keep the digest the same whatever the core count.
    """
    view = memoryview(data).cast("B")
    size = view.nbytes
    chunks = [view[i : i + _DIGEST_CHUNK] for i in range(0, size, _DIGEST_CHUNK)] or [view]
    leaves: list[bytes] = [b""] * len(chunks)

    def hash_every(start: int, step: int) -> None:
        for i in range(start, len(chunks), step):
            leaves[i] = blake3.blake3(chunks[i]).digest()

    workers = min(_DIGEST_THREADS, os.cpu_count() or 1, len(chunks))
    import threading  # noqa: PLC0415 - only to hash a large input

    threads = [threading.Thread(target=hash_every, args=(i, workers), daemon=True) for i in range(1, workers)]
    for thread in threads:
        thread.start()
    hash_every(0, workers)
    for thread in threads:
        thread.join()
    return blake3.blake3(b"wasmcache-wasm-v1\0" + size.to_bytes(8, "little") + b"".join(leaves)).hexdigest()


def cache_key(fingerprint: str, kind: str, input_digest: str) -> str:
    """The entry key: engine fingerprint, what the input is (module, component, a serialized one) and its digest."""
    return blake3.blake3(f"wasmcache-key-v1\0{fingerprint}\0{kind}\0{input_digest}".encode()).hexdigest()


def snapshot_key(fingerprint: str, kind: str, artifact_digest: str) -> str:
    """The key of the snapshot of a serialized input (`load_precompiled`, the drop-in's `deserialize_file`):
    its own engine's fingerprint, its kind, the digest of its bytes. It follows from the bytes alone, so a
    publication of the very same bytes finds that snapshot with one lookup (see `Namespace.publish`)."""
    return cache_key(fingerprint, f"{kind}:serialized", artifact_digest)


def artifact_section(data: bytes | bytearray | memoryview, kind: str | None = None) -> bytes | None:
    """The engine section of a Wasmtime artifact (of `kind`, if given), or None for anything else."""
    from ._elf import ENGINE_SECTION, artifact_kind, find_section  # noqa: PLC0415 - not on the hit path

    if artifact_kind(data) is None or (kind is not None and artifact_kind(data) != kind):
        return None
    try:
        return find_section(data, ENGINE_SECTION)
    except ValueError:
        return None


def artifact_fingerprint(data: bytes | bytearray | memoryview) -> str | None:
    """The fingerprint of the engine that wrote artifact `data` (its namespace), or None."""
    section = artifact_section(data)
    return None if section is None else fingerprint_of_section(section)


def read_input(name: str, path: str) -> tuple[bytes, Identity]:
    """The whole file and the identity it had while read; SourceError (one line) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{name}: not a regular file")
            data = f.read()
            after = Identity.of(os.fstat(f.fileno()))
    except OSError as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return data, after


def wasm_kind(head: bytes) -> Kind:
    """"module" or "component" from a wasm binary's first 8 bytes (`\\0asm` + version + layer).

    Layer 1 is a component whatever its version; anything else (a truncated header, an unknown
    version) is left for wasmtime's compiler to describe, as a module.
    """
    return "component" if head[6:8] == b"\x01\0" else "module"


def source_of(source: Source) -> tuple[str, str | None, bytes | memoryview | None]:
    """(the name messages use, the path or None, the bytes or None) of a load's input."""
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>", None, source
    if isinstance(source, (bytearray, memoryview)):
        # No copy on the hit path (5 ms for 49 MB): hash the caller's buffer; a miss copies it.
        view = memoryview(source).cast("B")
        return f"<{view.nbytes} bytes>", None, view
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(source))
        if "\0" in path:
            raise SourceError(f"{path!r}: a path cannot contain a NUL byte")
        return path, path, None
    raise TypeError(f"source: expected a path or bytes, got {type(source).__name__}")


class SourceDigests:
    """Digests of input files by identity: in this process, and under `root`/digests/ when given."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, Identity], str] = {}
        self._guard = allocate_lock()

    @staticmethod
    def _memo_name(identity: Identity, tag: str) -> tuple[str, str]:
        """(memo file name, check token) for a file's identity and what is remembered of it."""
        prefix = "" if tag == "wasm" else f"{tag}:"  # "wasm" memos keep the names they always had
        digest = blake3.blake3(f"{prefix}{identity.dev}:{identity.ino}:{identity.size}:{identity.mtime_ns}:"
                               f"{identity.ctime_ns}".encode()).hexdigest()
        return digest[:32], digest[32:48]

    def digest(self, name: str, path: str, root: Path | None, *, writable: bool) -> tuple[str, bytes | None]:
        """The digest of file `path`, and its bytes when they had to be read (a hit never reads them)."""
        digest, data, _ = self._remembered(name, path, root, writable=writable, artifact=False)
        return digest, data

    def digest_and_fingerprint(self, name: str, path: str, root: Path | None, *, writable: bool) -> tuple[
            str, bytes | None, str | None]:
        """For a serialized file: its digest, its bytes if read, and its own engine's fingerprint (None:
        not a Wasmtime artifact), remembered together."""
        return self._remembered(name, path, root, writable=writable, artifact=True)

    def _remembered(self, name: str, path: str, root: Path | None, *, writable: bool, artifact: bool) -> tuple[
            str, bytes | None, str | None]:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise SourceError(f"{name}: {what}, expected a .wasm file")
        identity = Identity.of(st)
        tag = "artifact" if artifact else "wasm"
        with self._guard:
            known = self._known.get((tag, identity))
        if known is None and root is not None:
            known = self._read_memo(root, identity, tag)
        if known is not None:
            with self._guard:
                self._known[(tag, identity)] = known
            digest, _, remembered = known.partition(" ")
            return digest, None, (remembered if remembered != "-" else None) if artifact else None
        data, after = read_input(name, path)
        digest = wasm_digest(data)
        fingerprint = artifact_fingerprint(data) if artifact else None
        value = f"{digest} {fingerprint or '-'}" if artifact else digest
        if after == identity:  # remember only what was read from a file that did not change under us
            with self._guard:
                self._known[(tag, identity)] = value
            if root is not None and writable:
                self._write_memo(root, identity, tag, value)
        return digest, data, fingerprint

    def _read_memo(self, root: Path, identity: Identity, tag: str) -> str | None:
        name, token = self._memo_name(identity, tag)
        raw = read_small_file(f"{root}/{DIGESTS_DIR}/{name}", 256)
        if raw is None:
            return None
        found, _, value = raw.decode("ascii", "replace").partition(" ")
        digest = value.partition(" ")[0]
        if found != token or len(digest) != 64:
            return None
        return value

    def _write_memo(self, root: Path, identity: Identity, tag: str, value: str) -> None:
        name, token = self._memo_name(identity, tag)
        path = root / DIGESTS_DIR / name
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomically(path, f"{token} {value}".encode())
        except OSError as exc:
            log.debug("wasmcache: cannot remember a digest in %s: %s", path, exc)
