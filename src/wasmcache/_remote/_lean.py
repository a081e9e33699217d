"""A lean GET: no botocore on the consumer's hot path (SigV4 signed here, for environment-only setups).

This is the one piece of hand-rolled protocol code in wasmcache, kept because importing botocore and
building a client costs ~0.2 s, most of a remote hit; a test checks its signature against botocore's.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping

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
