"""How a substituter's bytes arrive: https/http through one urllib3 pool per CA file (no retries: one
timeout per host, then the host is down for this process), file:// from disk, and python-tuf's fetcher on
top of both. Every failure is a `MissReason`: one short line, never an exception the caller must know."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

CONNECT_TIMEOUT: Final = 1.5  # seconds; a dead host costs this once per process
METADATA_READ_TIMEOUT: Final = 4.0
# One refresh (root, timestamp, snapshot, targets) ends after this long, however the host paces its
# bytes: a read timeout is per recv, so a host that drips a byte every few seconds never meets it.
METADATA_DEADLINE: Final = 10.0
STALL_TIMEOUT: Final = 5.0  # no byte for this long: the download is abandoned
_CHUNK: Final = 1 << 20
TOO_SLOW: Final = "download abandoned: slower than compiling locally"

lock = threading.Lock()  # the client's process-wide state (here: pools, hosts down) is changed under it
down_hosts: set[str] = set()


class MissReason(Exception):  # noqa: N818 - a reason, raised to leave the fetch at any depth
    """Why a substituter served nothing: one short line in plain words (none published, connection
    refused, metadata expired on ...), never a library's raw exception text.

    `rejected`: the substituter answered with something that failed verification (a signature, a
    rolled-back or mixed version, bytes that do not match their signed length and hash, an artifact
    this host must not load): an attack or a broken publication, not just a miss. Counted apart
    (`pull` exits 1) and, for metadata, the next trusted root is tried.
    """

    def __init__(self, reason: str, *, warn: bool = False, host_down: str | None = None,
                 rejected: bool = False, expired: bool = False, rolled_back: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.warn = warn
        self.host_down = host_down
        self.rejected = rejected
        self.expired = expired  # signed metadata past its expiry (a frozen or stale mirror)
        self.rolled_back = rolled_back  # older metadata than this machine already trusts (rejected too)


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"


def import_tuf() -> None:
    """Import python-tuf, without securesystemslib's optional AWS signer pulling in boto3.

    securesystemslib.signer imports boto3 when it is installed (for a KMS signer we never use):
    137 ms of a 175 ms import, measured with the test extras. boto3/botocore are hidden while tuf
    loads unless the program already imported them (then they cost nothing more).
    """
    import sys  # noqa: PLC0415

    if "tuf.ngclient" in sys.modules:
        return
    hidden = [name for name in ("boto3", "botocore") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import boto3` raise ImportError
    try:
        import tuf.api.metadata  # noqa: PLC0415
        import tuf.ngclient  # noqa: F401, PLC0415
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


# --- the fetcher -------------------------------------------------------------------------------------

_pools: dict[str | None, Any] = {}
_guard = threading.local()  # .deadline: when the response headers now being awaited stop being awaited


class DeadlinePassed(Exception):  # noqa: N818 - raised through urllib3 (which closes the connection)
    """The response headers did not all arrive before the deadline."""


def _pool(ca_file: str | None) -> Any:
    import urllib3  # noqa: PLC0415

    with lock:
        pool = _pools.get(ca_file)
        if pool is None:
            # No retries (connect=0: one timeout per host), redirects followed (release assets redirect).
            retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5,
                                    raise_on_redirect=True, raise_on_status=False)
            pool = urllib3.PoolManager(retries=retries, ca_certs=ca_file, maxsize=4,
                                       headers={"User-Agent": "wasmcache"})
            pool.pool_classes_by_scheme = _deadline_pool_classes()
            _pools[ca_file] = pool
        return pool


def _deadline_pool_classes() -> dict[str, Any]:
    """urllib3's pools, with connections whose wait for response headers ends at `_guard.deadline`.

    The socket is shut down at the deadline (a timer thread, only while headers are awaited): the
    blocked read returns, urllib3 raises, and `open_stream` words it as too slow. The body is bounded
    by checks between reads (`_response_chunks`).
    """
    import socket  # noqa: PLC0415

    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool  # noqa: PLC0415
    from urllib3.connection import HTTPConnection, HTTPSConnection  # noqa: PLC0415

    class _Bounded:
        sock: Any

        def getresponse(self) -> Any:
            deadline = getattr(_guard, "deadline", None)
            if deadline is None:
                return super().getresponse()  # type: ignore[misc]
            cut = threading.Event()
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut, (cut,))
            timer.daemon = True
            timer.start()
            try:
                response = super().getresponse()  # type: ignore[misc]
            except Exception:
                if cut.is_set():
                    raise DeadlinePassed from None
                raise
            finally:
                timer.cancel()
            if cut.is_set():  # the cut ended the headers early: what came is not a response
                raise DeadlinePassed
            return response

        def _cut(self, cut: threading.Event) -> None:
            cut.set()
            sock = self.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    class _HTTPConnection(_Bounded, HTTPConnection):
        pass

    class _HTTPSConnection(_Bounded, HTTPSConnection):
        pass

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    return {"http": _HTTPPool, "https": _HTTPSPool}


def http_error(url: str, status: int) -> Exception:
    from tuf.api import exceptions  # noqa: PLC0415

    return exceptions.DownloadHTTPError(f"HTTP {status} for {url}", status)


def open_stream(url: str, ca_file: str | None, read_timeout: float, deadline: float, too_slow: str) -> Iterator[bytes]:
    """The body of `url` in chunks; DownloadHTTPError for an HTTP status >= 400 (and a missing file).

    A connection failure or timeout marks the host down for this process and raises MissReason; so
    does a transfer (headers or body) still running at `deadline` (time.monotonic()), worded `too_slow`.
    """
    host = host_of(url)
    if host in down_hosts:
        raise MissReason("unreachable (failed earlier in this process)")
    if url.startswith("file://"):
        return _file_chunks(url)
    import urllib3  # noqa: PLC0415

    _guard.deadline = deadline
    try:
        response = _pool(ca_file).request(
            "GET", url, preload_content=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout))
    except DeadlinePassed:
        down_hosts.add(host)
        raise MissReason(too_slow, warn=True, host_down=host) from None
    except urllib3.exceptions.HTTPError as exc:
        down_hosts.add(host)
        raise MissReason(network_reason(exc, read_timeout), warn=True, host_down=host) from None
    finally:
        _guard.deadline = None
    if response.status >= 400:
        # The error page is not read: a host may send it as slowly as it likes. Closing costs the next
        # request (a refresh's first is a 404 whenever no newer root was published) a new connection.
        response.close()
        response.release_conn()
        raise http_error(url, response.status)
    return _response_chunks(response, host, read_timeout, deadline, too_slow)


def _response_chunks(response: Any, host: str, read_timeout: float, deadline: float,
                     too_slow: str) -> Iterator[bytes]:
    import urllib3  # noqa: PLC0415

    complete = False
    try:
        # read1: whatever has arrived (up to _CHUNK), so a dribbling host meets the deadline check
        # between reads; stream(n) would block until n bytes came.
        while chunk := response.read1(_CHUNK, decode_content=False):  # the signed bytes, never decoded
            if time.monotonic() >= deadline:
                down_hosts.add(host)
                raise MissReason(too_slow, warn=True, host_down=host)
            yield chunk
        complete = True
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        down_hosts.add(host)
        raise MissReason(network_reason(exc, read_timeout), warn=True, host_down=host) from None
    finally:
        if not complete:
            response.close()  # unread bytes must not go back to the pool with the connection
        response.release_conn()


def _file_chunks(url: str) -> Iterator[bytes]:
    path = unquote(urlsplit(url).path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except (FileNotFoundError, NotADirectoryError):
        raise http_error(url, 404) from None
    except PermissionError:
        raise http_error(url, 403) from None
    return _closing_chunks(f)


def _closing_chunks(f: Any) -> Iterator[bytes]:
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


def short(exc: object) -> str:
    """An exception's first line, at most 160 characters (for what has no plainer wording)."""
    text = str(exc).strip()
    return text.splitlines()[0][-160:] if text else type(exc).__name__


def network_reason(exc: BaseException, read_timeout: float) -> str:
    """A failed connection or transfer in plain words: "unreachable: connection refused", "timed out
    after 5 s without data", "unreachable: TLS certificate not trusted (...)"."""
    import http.client  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    import urllib3  # noqa: PLC0415

    errors = urllib3.exceptions
    cause = _cause(exc)
    connect_timeout = f"unreachable: connect timed out after {CONNECT_TIMEOUT:g} s"
    words: list[tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[Any], str]]] = [
        (errors.NameResolutionError, lambda _: "unreachable: host name not found"),
        # NewConnectionError is a ConnectTimeoutError (urllib3 2): tested first
        (errors.NewConnectionError, lambda e: connect_timeout if "timed out" in str(e) else _os_words(e)),
        (errors.ConnectTimeoutError, lambda _: connect_timeout),
        ((errors.ReadTimeoutError, TimeoutError), lambda e: _timeout_words(e, read_timeout)),
        (ssl.SSLCertVerificationError, lambda e: f"unreachable: TLS certificate not trusted ({e.verify_message}); "
                                                 "give the host's CA with $WASMCACHE_SUBSTITUTER_CA"),
        ((ssl.SSLError, errors.SSLError), lambda e: f"unreachable: TLS failed ({getattr(e, 'reason', 0) or short(e)})"),
        ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError), lambda _: "connection reset by the host"),
        ((errors.ProtocolError, errors.IncompleteRead, http.client.IncompleteRead),
         lambda _: "connection broken mid-transfer (the host sent less than it announced)"),
        (OSError, _os_words),
    ]
    return next((say(cause) for types, say in words if isinstance(cause, types)), f"unreachable: {short(cause)}")


def _timeout_words(exc: BaseException, read_timeout: float) -> str:
    """A read that timed out. urllib3 names the timeout it used ("(read timeout=1.5)"): during a TLS
    handshake that is the connect timeout, not `read_timeout`, and no response was ever awaited."""
    import re  # noqa: PLC0415

    found = re.search(r"read timeout=([0-9.]+)\)", str(exc))
    seconds = float(found.group(1)) if found else read_timeout
    if seconds != read_timeout:
        return f"unreachable: TLS handshake timed out after {seconds:g} s"
    return f"timed out after {read_timeout:g} s without data"


def _os_words(exc: BaseException) -> str:
    """ "unreachable: connection refused" from an OSError, or from urllib3's text that embeds one
    ("...: Failed to establish a new connection: [Errno 111] Connection refused")."""
    text = getattr(exc, "strerror", None)
    if not text:
        text = str(exc).rsplit("] ", 1)[-1] if "[Errno" in str(exc) else short(exc)
    return f"unreachable: {text.strip().lower()}"


def _cause(exc: BaseException) -> BaseException:
    """What urllib3's wrappers (MaxRetryError, ProtocolError, SSLError) carry: the cause decides the words."""
    import urllib3  # noqa: PLC0415

    errors = urllib3.exceptions
    for _ in range(8):  # a few wrappers deep at most (and never a loop)
        inner: object = None
        if isinstance(exc, errors.MaxRetryError):
            inner = exc.reason
        elif isinstance(exc, errors.ProtocolError) and len(exc.args) > 1:
            inner = exc.args[1]
        elif isinstance(exc, errors.SSLError) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def make_fetcher(ca_file: str | None) -> Any:
    """python-tuf's fetcher over `open_stream`: every file of one refresh shares one deadline
    (`METADATA_DEADLINE` from the first fetch on)."""
    from tuf.ngclient import FetcherInterface  # type: ignore[attr-defined]  # noqa: PLC0415

    class _Fetcher(FetcherInterface):
        deadline: float | None = None

        def _fetch(self, url: str) -> Iterator[bytes]:
            if self.deadline is None:
                self.deadline = time.monotonic() + METADATA_DEADLINE
            too_slow = f"too slow: its metadata took over {METADATA_DEADLINE:g} s"
            return open_stream(url, ca_file, METADATA_READ_TIMEOUT, self.deadline, too_slow)

        def fetch(self, url: str) -> Iterator[bytes]:
            return self._fetch(url)  # MissReason passes through unwrapped

    return _Fetcher()


# --- the caller's file: a capped, hashed stream into it -----------------------------------------------


class CheckedReader:
    """A file-like view of the body: counts and keeps what arrived, capped by the signed length, timed."""

    def __init__(self, chunks: Iterator[bytes], length: int, deadline: float) -> None:
        self._chunks = chunks
        self._length = length
        self._deadline = deadline
        self._pending = b""
        self.received = 0
        self._hash = sha256_hasher()

    def read(self, n: int = -1) -> bytes:
        while not self._pending:
            if time.monotonic() > self._deadline:
                raise MissReason(TOO_SLOW, warn=True)
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self.received += len(chunk)
            if self.received > self._length:
                raise MissReason("untrusted: artifact longer than its signed length (endless data?)", warn=True,
                                 rejected=True)
            self._hash.update(chunk)
            self._pending = chunk
        size = len(self._pending) if n < 0 else n
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def sha256(self) -> str:
        return str(self._hash.hexdigest())


def sha256_hasher() -> Any:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256()


def readable(fd: int) -> int:
    """`fd` if it can be read; else a read-only descriptor of the same file (a caller's O_WRONLY temp file)."""
    import fcntl  # noqa: PLC0415

    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
        return fd
    for name in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
        try:
            return os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
    raise MissReason("cannot read back the written artifact (pass an O_RDWR file descriptor)", warn=True)


def open_dest(dest: int | str | os.PathLike[str]) -> tuple[int, str | None]:
    if isinstance(dest, int):
        os.ftruncate(dest, 0)
        os.lseek(dest, 0, os.SEEK_SET)
        return dest, None
    path = os.fspath(dest)
    existed = os.path.lexists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    return fd, None if existed else path


def empty(dest: int | str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError, TypeError):
        if isinstance(dest, int):
            os.ftruncate(dest, 0)
        else:
            os.truncate(os.fspath(dest), 0)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- doctor ------------------------------------------------------------------------------------------------
