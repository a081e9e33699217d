"""Signing keys of the remote tier: Ed25519 in PEM (or OpenSSH) files, with one-line errors naming the file."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

import blake3

from .._core import log
from .._errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey



def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (blake3 of its raw 32 bytes), stored in each artifact."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return raw_key_id(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def raw_key_id(raw: bytes) -> str:
    """`key_id` of a public key's raw 32 bytes (as TUF metadata holds them, in hex)."""
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
        raise ConfigError(f"{role} {path}: not a valid PEM private key ({first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{role} {path}: not an Ed25519 key ({type(key).__name__.removeprefix('_')}); "
                          "create one with `wasmcache keygen`")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.fspath(path) not in _said_readable:
        _said_readable.add(os.fspath(path))  # a key loaded twice (checked before compiling, then used) says it once
        log.warning("wasmcache: signing key %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return key


_said_readable: set[str] = set()


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
        raise ConfigError(f"{role} {path}: not a valid PEM public key ({first_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{role} {path}: not an Ed25519 key ({type(key).__name__.removeprefix('_')}); "
                          "create one with `wasmcache keygen`")
    return key


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
