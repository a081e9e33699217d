"""The publisher: compile wasm at CPU levels, and sign a static TUF tree that any static host can serve.

Tree (every name is flat inside its directory, so a GitHub release's assets can hold it too)::

    DIR/root.json                           the newest root: what consumers are given to trust
    DIR/metadata/N.root.json                every root version (old consumers walk the chain)
    DIR/metadata/N.targets.json             consistent snapshots: versioned, never rewritten
    DIR/metadata/N.snapshot.json
    DIR/metadata/timestamp.json             the only metadata file replaced in place (last)
    DIR/targets/<sha256>.<target path>      content-addressed artifacts (zstd), never rewritten
    DIR/wasmcache-unsigned.json             only in an --unsigned part of a CI matrix

A target path is ``<kind>-<wasm digest[:32]>-<ABI hash[:32]>-<level>.cwasm.zst``: a consumer computes
it from what it loads and its own engine, so it looks artifacts up by name, highest level first.
Each target's signed ``custom`` holds what a consumer needs before downloading (see `target_custom`).

Keys (python-tuf's Metadata API; Ed25519 PEM files from `wasmcache keygen`): one signing key may
hold every role (threshold 1): targets, snapshot and timestamp must be re-signed by whoever
publishes (CI), so they need an online key; root only changes on a rotation. `--root-key` keeps root
under a separate key (offline), so that a stolen CI key can be rotated away.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._core import log, write_atomically
from .._errors import CacheError, ConfigError
from .._lock import KeyLock
from ._levels import METADATA_DIR, REVOKED_FIELD, TARGETS_DIR

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp  # type: ignore[attr-defined]

    from .._engine import EngineSettings
    from ._build import Built


UNSIGNED_FILE: Final = "wasmcache-unsigned.json"
ROLES: Final = ("root", "targets", "snapshot", "timestamp")
PUBLISH_LOCK: Final = ".wasmcache-publish.lock"
UNSIGNED_ONLY: Final = ("--unsigned writes a part for a later signing step; --merge, --revoke, --rotate-to and "
                        "--root-key need --signing-key")


class PublishError(CacheError):
    """`wasmcache publish` cannot do what was asked (printed as one line, exit 2)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _create_only(final: Path, data: bytes) -> bool:
    """Write `final` if absent (True); an existing file must hold exactly `data` (False) or this fails."""
    if os.path.lexists(final):
        with open(final, "rb") as f:
            if f.read(len(data) + 1) != data:
                raise PublishError(f"{final}: exists with other content; published files are never "
                                         "rewritten (is another publisher writing this tree?)")
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.name}.{os.urandom(6).hex()}.tmp")
    try:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temp, final)  # fails if it appeared meanwhile: never replaced
    except FileExistsError:
        return _create_only(final, data)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return True


def _write_versioned(final: Path, data: bytes) -> None:
    """A versioned metadata file one version past what the tree's root.json and timestamp.json name: no
    consumer can have seen it (timestamp.json and root.json are written last), so a leftover of an
    interrupted publish is replaced."""
    _replace(final, data)


def _replace(final: Path, data: bytes) -> None:
    """A small tree file replaced durably, readable by the web server that serves the tree."""
    write_atomically(final, data, mode=0o644, durable=True)


def put_target(out: Path, built: Built) -> dict[str, Any]:
    """Store one artifact content-addressed under out/targets/ (create-only): its unsigned entry."""
    sha = _sha256(built.data)
    _create_only(out / TARGETS_DIR / f"{sha}.{built.path}", built.data)
    return {"path": built.path, "length": len(built.data), "hashes": {"sha256": sha}, "custom": built.custom}


def write_unsigned(out: Path, built: Iterable[Built]) -> list[dict[str, Any]]:
    """An unsigned part of a CI matrix: the artifacts, and their entries in out/wasmcache-unsigned.json."""
    entries = read_unsigned(out) if (out / UNSIGNED_FILE).exists() else []
    known = {e["path"] for e in entries}
    for item in built:
        entry = put_target(out, item)
        if entry["path"] not in known:
            entries.append(entry)
            known.add(entry["path"])
    _replace(out / UNSIGNED_FILE, json.dumps({"wasmcache_unsigned": 1, "targets": entries}, indent=1).encode())
    return entries


def read_unsigned(part: Path) -> list[dict[str, Any]]:
    """The entries of an unsigned part, each checked against its file (length, sha256)."""
    try:
        raw = json.loads((part / UNSIGNED_FILE).read_bytes())
        entries = raw["targets"]
        if raw.get("wasmcache_unsigned") != 1 or not isinstance(entries, list):
            raise ValueError("not a wasmcache unsigned part")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{part / UNSIGNED_FILE}: cannot read an unsigned part: {exc}") from None
    return entries


def _merge_part(out: Path, part: Path) -> list[dict[str, Any]]:
    entries = read_unsigned(part)
    for entry in entries:
        sha = entry["hashes"]["sha256"]
        source = part / TARGETS_DIR / f"{sha}.{entry['path']}"
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise PublishError(f"{source}: cannot read: {exc.strerror or exc}") from None
        if len(data) != entry["length"] or _sha256(data) != sha:
            raise PublishError(f"{source}: does not match its entry in {part / UNSIGNED_FILE}")
        if part.resolve() != out.resolve():
            _create_only(out / TARGETS_DIR / f"{sha}.{entry['path']}", data)
    return entries


class Keys(NamedTuple):
    signing: Any  # securesystemslib CryptoSigner for targets, snapshot, timestamp
    root: Any  # the signer of root (the same as `signing` unless --root-key)


def load_signer(path: str) -> Any:
    from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]  # noqa: PLC0415

    from .._remote._keys import load_signing_key  # noqa: PLC0415

    private = load_signing_key(path)
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _serialize(md: Metadata[Any]) -> bytes:
    from tuf.api.serialization.json import JSONSerializer  # noqa: PLC0415

    return md.to_bytes(JSONSerializer(compact=False))


class Tree:
    """The signed metadata of a tree on disk (or a new one), changed in memory and written by `write`."""

    def __init__(self, out: Path) -> None:
        from tuf.api.metadata import Metadata  # noqa: PLC0415

        self.out = out
        self.meta = out / METADATA_DIR
        self.root: Metadata[Root] | None = None
        self.targets: Metadata[Targets] | None = None
        self.snapshot: Metadata[Snapshot] | None = None
        self.timestamp: Metadata[Timestamp] | None = None
        self.root_changed = False
        self.fresh = False  # a new tree: its first versions are 1
        if not (out / "root.json").exists():
            return
        try:
            self.root = Metadata.from_bytes((out / "root.json").read_bytes())
            self.timestamp = Metadata.from_bytes((self.meta / "timestamp.json").read_bytes())
            snap_version = self.timestamp.signed.snapshot_meta.version
            self.snapshot = Metadata.from_bytes((self.meta / f"{snap_version}.snapshot.json").read_bytes())
            targets_version = self.snapshot.signed.meta["targets.json"].version
            self.targets = Metadata.from_bytes((self.meta / f"{targets_version}.targets.json").read_bytes())
            root = self.root.signed
            root.verify_delegate("root", self.root.signed_bytes, self.root.signatures)
            root.verify_delegate("targets", self.targets.signed_bytes, self.targets.signatures)
            root.verify_delegate("snapshot", self.snapshot.signed_bytes, self.snapshot.signatures)
            root.verify_delegate("timestamp", self.timestamp.signed_bytes, self.timestamp.signatures)
        except Exception as exc:  # OSError, DeserializationError, UnsignedMetadataError, KeyError
            raise PublishError(f"{out}: not a valid wasmcache publish tree ({type(exc).__name__}: "
                                     f"{exc}); publish into an empty directory or repair it") from None

    def create(self, keys: Keys, root_days: int) -> None:
        from tuf.api.metadata import (  # type: ignore[attr-defined]  # noqa: PLC0415
            Metadata,
            Root,
            Snapshot,
            Targets,
            Timestamp,
        )

        root = Root(expires=_now() + dt.timedelta(days=root_days), consistent_snapshot=True)
        for role in ROLES:
            root.add_key((keys.root if role == "root" else keys.signing).public_key, role)
        self.root = Metadata(root)
        self.targets = Metadata(Targets(expires=_now()))
        self.snapshot = Metadata(Snapshot(expires=_now()))
        self.timestamp = Metadata(Timestamp(expires=_now()))
        self.root_changed = True
        self.fresh = True

    def check_keys(self, keys: Keys) -> None:
        assert self.root is not None  # created or loaded before
        roles = self.root.signed.roles
        for role in ("targets", "snapshot", "timestamp"):
            if keys.signing.public_key.keyid not in roles[role].keyids:
                from .._remote._keys import raw_key_id  # noqa: PLC0415

                shown = raw_key_id(bytes.fromhex(keys.signing.public_key.keyval["public"]))
                raise ConfigError(f"the signing key (key id {shown}, as `wasmcache keygen` named it) is not a key of "
                                  f"this tree's {role} role: sign with the tree's key (whoever holds it can move the "
                                  "tree to this one with --rotate-to)")

    def rotate(self, keys: Keys, new: Any, root_days: int) -> None:
        """Root N+1 where `new` holds every role the old signing key held (old consumers follow the chain)."""
        assert self.root is not None
        root = self.root.signed
        old_id = keys.signing.public_key.keyid
        for role in ROLES:
            if old_id in root.roles[role].keyids:
                root.revoke_key(old_id, role)
                root.add_key(new.public_key, role)
        self._bump_root(root_days)

    def _bump_root(self, root_days: int) -> None:
        assert self.root is not None
        self.root.signed.version += 1
        self.root.signed.expires = _now() + dt.timedelta(days=root_days)
        self.root_changed = True

    def refresh_root_if_expiring(self, root_days: int) -> None:
        assert self.root is not None
        if self.root.signed.expires - _now() < dt.timedelta(days=root_days) / 4:
            self._bump_root(root_days)

    def add(self, entries: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
        """Add unsigned entries to targets: (added, already there, refused as revoked content). An existing
        path is never replaced."""
        from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]  # noqa: PLC0415

        assert self.targets is not None
        targets = self.targets.signed.targets
        revoked = self.targets.signed.unrecognized_fields.get(REVOKED_FIELD, [])
        revoked_digests = {r.get("blake3") for r in revoked if isinstance(r, dict)} - {None}
        added = kept = refused = 0
        for entry in entries:
            path = entry["path"]
            if entry["custom"].get("blake3") in revoked_digests:
                # Revoked once, never again: the same bytes (a rebuild with the same wasmtime, a publish job
                # run twice) must not bring a miscompiled artifact back.
                log.warning("wasmcache: %s has the content of a revoked artifact; not published again (rebuild "
                            "it with a fixed wasmtime)", path)
                refused += 1
                continue
            if path in targets:
                if targets[path].hashes != entry["hashes"]:
                    log.warning("wasmcache: %s is already published with other bytes; kept the published one "
                                "(revoke it first to replace it)", path)
                kept += 1
                continue
            targets[path] = TargetFile(entry["length"], dict(entry["hashes"]), path,
                                       unrecognized_fields={"custom": entry["custom"]})
            added += 1
        return added, kept, refused

    def check_rebuilds(self, specs: Sequence[str], builds: Sequence[Rebuild]) -> None:
        """A SPEC that revokes an artifact this run would build again, byte for byte (compiles are
        deterministic: the same wasm, settings, level and wasmtime), leaves that input unpublished (a revoked
        artifact is never published again): refused before compiling."""
        from .._core import wasmtime_version  # noqa: PLC0415

        targets = self.targets.signed.targets if self.targets is not None else {}
        version = wasmtime_version()
        for spec in specs:
            parsed = parse_revoke_spec(spec)
            for path, info in targets.items():
                custom = info.custom if isinstance(info.custom, dict) else {}
                if custom.get("wasmtime") != version or not _selects(parsed, path, info):
                    continue
                if any(custom.get("wasm") == b.wasm and custom.get("settings") == b.settings
                       and (b.levels is None or custom.get("level") in b.levels) for b in builds):
                    raise PublishError(
                        f"--revoke {spec}: revokes {path}, which this run would build again byte for byte (the same "
                        f"wasm, settings and level, and wasmtime {version}): a revoked artifact is never published "
                        "again; revoke alone now, and publish fresh builds from a fixed wasmtime")

    def check_revoke(self, specs: Sequence[str]) -> None:
        """Each SPEC matches an artifact this tree publishes now. A revoke names signed artifacts, never those
        the same run adds (it is applied first); one that matches nothing (a typo, a version never published,
        an artifact already revoked) would only re-sign the tree, so it is refused before anything is written."""
        targets = self.targets.signed.targets if self.targets is not None else {}
        for spec in specs:
            parsed = parse_revoke_spec(spec)
            if not any(_selects(parsed, path, info) for path, info in targets.items()):
                where = (f"{self.out} has no published tree yet" if self.root is None else
                         f"none is published in {self.out} (never published, or revoked already)")
                raise PublishError(f"--revoke {spec}: matches no artifact: {where}; nothing was written")

    def revoke(self, specs: Sequence[str]) -> list[str]:
        """Remove the targets matching any SPEC (``field=value[,field=value]``, all must match); record them."""
        assert self.targets is not None
        targets = self.targets.signed.targets
        parsed = [parse_revoke_spec(spec) for spec in specs]
        removed: list[str] = []
        for path, info in list(targets.items()):
            custom = info.custom if isinstance(info.custom, dict) else {}
            if any(_selects(spec, path, info) for spec in parsed):
                removed.append(path)
                del targets[path]
                record = self.targets.signed.unrecognized_fields.setdefault(REVOKED_FIELD, [])
                record.append({"path": path, "blake3": custom.get("blake3"), "revoked": _now().isoformat()})
        return removed

    def write(self, keys: Keys, new_signer: Any, days: int) -> None:
        """Sign what changed and write it: targets, snapshot, root (if changed), timestamp last, root.json."""
        from tuf.api.metadata import MetaFile  # type: ignore[attr-defined]  # noqa: PLC0415

        assert self.root is not None
        assert self.targets is not None
        assert self.snapshot is not None
        assert self.timestamp is not None
        expires = _now() + dt.timedelta(days=days)
        self.meta.mkdir(parents=True, exist_ok=True)
        # Versioned files newer than what root.json and timestamp.json name were never published (a
        # publish interrupted before its last step): they may be written again.
        if self.root_changed:
            self.root.signatures.clear()
            self.root.sign(keys.root, append=True)
            if new_signer is not None and new_signer.public_key.keyid in self.root.signed.roles["root"].keyids:
                self.root.sign(new_signer, append=True)
            _write_versioned(self.meta / f"{self.root.signed.version}.root.json", _serialize(self.root))
        signer = new_signer or keys.signing
        step = 0 if self.fresh else 1

        def next_version(md: Any, role: str) -> bytes:
            """`md` one version on, expiring at `expires`, signed and written as N.<role>.json: its bytes."""
            md.signed.version += step
            md.signed.expires = expires
            md.signatures.clear()
            md.sign(signer)
            data = _serialize(md)
            _write_versioned(self.meta / f"{md.signed.version}.{role}.json", data)
            return data

        next_version(self.targets, "targets")
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        snapshot_bytes = next_version(self.snapshot, "snapshot")
        self.timestamp.signed.version += step
        self.timestamp.signed.expires = expires
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version,
                                                       length=len(snapshot_bytes),
                                                       hashes={"sha256": _sha256(snapshot_bytes)})
        self.timestamp.signatures.clear()
        self.timestamp.sign(signer)
        _replace(self.meta / "timestamp.json", _serialize(self.timestamp))
        if self.root_changed:
            _replace(self.out / "root.json", _serialize(self.root))


def _selects(spec: dict[str, str], path: str, info: Any) -> bool:
    """Whether a parsed revoke SPEC matches the target `path` (every field; `wasm` and `blake3` by prefix)."""
    custom = info.custom if isinstance(info.custom, dict) else {}
    fields = {**{k: str(v) for k, v in custom.items()}, "path": path}
    return all(fields.get(k, "").startswith(v) if k in ("wasm", "blake3") else fields.get(k) == v
               for k, v in spec.items())


def _check_rotation(tree: Tree, keys: Keys, rotate_to: str, new: Any) -> None:
    """A rotation that would change nothing but the root's version, that has no tree to rotate, or that
    cannot sign the new root: refused."""
    if new.public_key.keyid == keys.signing.public_key.keyid:
        raise PublishError(f"--rotate-to {rotate_to}: is already the signing key (the same key as --signing-key); "
                           "nothing to rotate: rotate to a new key from `wasmcache keygen`")
    if tree.root is None:
        raise ConfigError("--rotate-to: no tree in --out yet; create it with the key you want")
    if keys.root.public_key.keyid not in tree.root.signed.roles["root"].keyids:
        raise ConfigError("--rotate-to needs the root key (--root-key) of this tree")


def parse_revoke_spec(spec: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    allowed = ("path", "wasm", "wasmtime", "engine_major", "level", "kind", "name", "blake3", "abi")
    for item in spec.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in allowed or not value:
            raise ConfigError(f"--revoke {spec}: expected FIELD=VALUE[,FIELD=VALUE] with FIELD one of "
                              f"{', '.join(allowed)} (e.g. wasmtime=50.0.0)")
        fields[key] = value
    return fields


class PublishResult(NamedTuple):
    added: int
    kept: int
    revoked: tuple[str, ...]
    version: int  # the new targets version (0 for an unsigned part)
    refused: int = 0  # artifacts with the content of a revoked one: never published again


def check_before_compiling(out: str | os.PathLike[str], *, signing_key: str | None, root_key: str | None = None,
                           rotate_to: str | None = None, revoke: Sequence[str] = (),
                           builds: Sequence[Rebuild] = ()) -> None:
    """What `publish` would refuse after the compiles, refused before them (a compile can take minutes).
    `builds`: what this run compiles (with this Python's wasmtime)."""
    target = Path(out)
    existing = next((p for p in (target, *target.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        raise PublishError(f"--out {target}: " + ("not a directory" if existing == target else
                                                   f"{existing} is not a directory"))
    if signing_key is None:
        if revoke or rotate_to or root_key:
            raise ConfigError(UNSIGNED_ONLY)
        return
    signing = load_signer(signing_key)
    root = load_signer(root_key) if root_key else signing
    tree = Tree(target)
    if tree.root is not None:
        tree.check_keys(Keys(signing, root))
    if rotate_to:
        _check_rotation(tree, Keys(signing, root), rotate_to, load_signer(rotate_to))
    tree.check_revoke(revoke)
    tree.check_rebuilds(revoke, builds)


class Rebuild(NamedTuple):
    """What one input of this run will be compiled as: its wasm digest, engine settings, levels (None: all)."""

    wasm: str
    settings: str
    levels: Sequence[str] | None


def check_inputs(files: Sequence[str | os.PathLike[str]]) -> None:
    """Every input readable, and a wasm binary or WAT text, before the first compile (a typo among the
    inputs must not cost every level's compile of the others first)."""
    for file in files:
        name = os.fsdecode(file)
        try:
            with open(file, "rb") as f:
                head = f.read(4096)
        except OSError as exc:
            raise PublishError(f"{name}: cannot read it ({exc.strerror or exc})") from None
        text = head.lstrip()
        if not head.startswith(b"\0asm") and not text.startswith((b"(", b";;")):
            raise PublishError(f"{name}: neither a wasm binary nor WAT text")


def rebuilds(files: Sequence[str | os.PathLike[str]], settings: EngineSettings | None,
             levels: Sequence[str] | None) -> list[Rebuild]:
    """What compiling `files` with `settings` at `levels` will build, told before compiling (`check_rebuilds`)."""
    from .._core import read_input, wasm_digest  # noqa: PLC0415
    from .._engine import EngineSettings  # noqa: PLC0415

    described = (settings or EngineSettings()).describe()
    return [Rebuild(wasm_digest(read_input(os.fsdecode(f), os.fsdecode(f))[0]), described, levels) for f in files]


def publish(out: str | os.PathLike[str], built: Sequence[Built] = (), *, signing_key: str | None,
            root_key: str | None = None, merge: Sequence[str | os.PathLike[str]] = (),
            revoke: Sequence[str] = (), rotate_to: str | None = None, days: int = 30,
            root_days: int = 365) -> PublishResult:
    """Add `built` artifacts and merged unsigned parts to the tree in `out`, revoke, rotate, sign.

    `signing_key=None` writes an unsigned part (for `merge` by one signing step later). Artifacts are
    written create-only first, then the metadata (timestamp last), so a consumer reading meanwhile
    sees the previous consistent state.
    """
    target = Path(out)
    if signing_key is None:
        if merge or revoke or rotate_to or root_key:
            raise ConfigError(UNSIGNED_ONLY)
        entries = write_unsigned(target, built)
        return PublishResult(len(entries), 0, (), 0)
    signing = load_signer(signing_key)
    keys = Keys(signing, load_signer(root_key) if root_key else signing)
    new_signer = load_signer(rotate_to) if rotate_to else None
    target.mkdir(parents=True, exist_ok=True)
    # One publisher at a time per tree on this machine: the next version's files are written before the
    # timestamp that publishes them, and two writers of version N+1 must not interleave.
    with KeyLock(target / PUBLISH_LOCK):
        return _publish_locked(target, built, keys, signing, root_key, new_signer, merge, revoke, rotate_to, days,
                               root_days)


def _publish_locked(target: Path, built: Sequence[Built], keys: Keys, signing: Any, root_key: str | None,
                    new_signer: Any, merge: Sequence[str | os.PathLike[str]], revoke: Sequence[str],
                    rotate_to: str | None, days: int, root_days: int) -> PublishResult:
    # Refused before anything is written: a key not of this tree, a rotation that cannot or need not be done, a
    # revoke that matches nothing.
    tree = Tree(target)
    if tree.root is not None:
        tree.check_keys(keys)
    if rotate_to:
        _check_rotation(tree, keys, rotate_to, new_signer)
    tree.check_revoke(revoke)
    entries = [put_target(target, item) for item in built]
    for part in merge:
        entries += _merge_part(target, Path(part))
    if tree.root is None:
        tree.create(keys, root_days)
    else:
        if root_key is None and keys.root.public_key.keyid not in tree.root.signed.roles["root"].keyids:
            keys = Keys(signing, None)
        if rotate_to:  # _check_rotation: keys.root is a key of this tree's root
            tree.rotate(keys, new_signer, root_days)
        elif keys.root is not None:
            tree.refresh_root_if_expiring(root_days)
    revoked = tree.revoke(revoke) if revoke else []
    added, kept, refused = tree.add(entries)
    tree.write(keys, new_signer, days)
    assert tree.targets is not None
    return PublishResult(added, kept, tuple(revoked), tree.targets.signed.version, refused)
