"""Cache management, like ccache's: stats, ls, gc, verify, clear, inspect, doctor."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from _wasmcache_hook import one_line

from ._group import asdict, cache_dir_option, cli, count, fail, human, remote_options, root_of, say

if TYPE_CHECKING:
    from pathlib import Path

    from .._errors import ConfigError
    from .._maintenance import GcReport


@cli.command()
@cache_dir_option
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(cache_dir: Path | None, remote: str | None, signing_key: str | None, trusted_keys: tuple[str, ...],
          as_json: bool) -> None:
    """Entries, size and namespaces of the cache root (and the remote tier configured, if any)."""
    from .._core import existing_root, resolve_max_size  # noqa: PLC0415
    from .._core import namespaces as namespaces_of  # noqa: PLC0415
    from .._remote._settings import resolve_remote_settings  # noqa: PLC0415
    from .._stats import read_usage  # noqa: PLC0415

    root = root_of(cache_dir)
    existing_root(root, "read")
    usage = read_usage(root)
    namespaces: dict[str, dict[str, int]] = {}
    for namespace in namespaces_of(root):  # one scandir per namespace: names only, no stat, no record
        namespaces[namespace.name] = {"entries": sum(files.entry is not None for files in namespace.scan().keys)}
    if usage is not None:
        entries, size = usage.entries, usage.size_bytes
    else:  # no usage record, or one this user cannot read: counted now, as gc and verify count
        from .._maintenance import scan_usage  # noqa: PLC0415

        entries, size = scan_usage(root)
    max_size = resolve_max_size(None)
    data: dict[str, object] = {"root": str(root), "entries": entries, "size_bytes": size, "max_size": max_size,
                               "namespaces": namespaces}
    from .._dropin import read_totals  # noqa: PLC0415

    origins = _origins(root)
    data["origins"] = origins
    events = read_totals(root)  # what the drop-in did in the processes it served (`wasmcache exec`)
    if events.processes:
        data["dropin"] = {"processes": events.processes, **events.counts}
    configured = resolve_remote_settings(remote, signing_key, list(trusted_keys) or None, require_trusted=False)
    if configured is not None:
        data["remote"] = {"url": configured.url, "signs_uploads": configured.signing_key is not None,
                          "trusted_keys": list(configured.trusted_keys)}
    if as_json:
        say(json.dumps(data, indent=2))
        return
    say(f"cache root      {root}")
    say(f"entries         {entries}")
    say(f"size            {human(size)} of {human(max_size)}")
    if configured is not None:
        say(f"remote          {configured.url} ({len(configured.trusted_keys)} trusted key(s), "
            f"{'signs and uploads' if configured.signing_key else 'download only'})")
    if events.processes:
        counted = events.counts
        say(f"drop-in         {counted.get('hits', 0)} hits, {counted.get('misses', 0)} misses, "
            f"{counted.get('compiles', 0)} compiles in {events.processes} process(es) since "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(events.since or 0))} ({root}/events)")
    if origins:
        by_origin = _by_origin(origins)
        say("origins         " + ", ".join(f"{o['origin']} {o['entries']} ({_bytes_of(o)})" for o in by_origin))
        for o in origins:
            if o["origin"] == "substituted":
                say(f"  substituted   {count(o['entries'], 'entry', 'entries')}, {_bytes_of(o)}, "
                    f"{o['level']}, from {o['substituter']}")
    say(f"namespaces      {len(namespaces)}")
    for name, ns in sorted(namespaces.items()):
        say(f"  {name}  {count(ns['entries'], 'entry', 'entries')}")


def _origin_of(info: Any) -> dict[str, Any]:
    """Where an entry came from, as `ls`, `stats`, `verify` and `inspect` show it (its record's words)."""
    return {"origin": info.origin, "substituter": info.substituter, "level": info.level}


def _origins(root: Path) -> list[dict[str, Any]]:
    """Entries and bytes by (origin, substituter, level), most entries first: the records `ls` reads."""
    from .._maintenance import list_entries  # noqa: PLC0415

    groups: dict[tuple[str, str | None, str | None], list[int]] = {}
    inodes: set[tuple[int, int]] = set()  # entries sharing identical content: their bytes count once
    for info in list_entries(root):
        counted = groups.setdefault((info.origin, info.substituter, info.level), [0, 0, 0])
        counted[0] += 1
        try:
            st = os.stat(info.path, follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in inodes:
            inodes.add((st.st_dev, st.st_ino))
            counted[1] += info.size
        else:
            counted[2] += 1  # its bytes are counted with the entry it shares a file with
    rows: list[dict[str, Any]] = [
        {"origin": origin, "substituter": substituter, "level": level, "entries": n, "size_bytes": size,
         "sharing": sharing}
        for (origin, substituter, level), (n, size, sharing) in groups.items()]
    rows.sort(key=lambda row: (-row["entries"], row["origin"], row["substituter"] or "", row["level"] or ""))
    return rows


def _bytes_of(row: dict[str, Any]) -> str:
    """A row's bytes, saying how many of its entries share the file of an entry counted before (identical
    content is stored once: `stats` would otherwise show a snapshot of 210 MB as "0 B" without a word)."""
    if not row["sharing"]:
        return human(row["size_bytes"])
    verb = "shares" if row["sharing"] == 1 else "share"
    return f"{human(row['size_bytes'])}; {row['sharing']} {verb} another entry's file"


def _by_origin(origins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`_origins` summed per origin alone (compiled, substituted, remote, snapshot)."""
    totals: dict[str, dict[str, Any]] = {}
    for row in origins:
        total = totals.setdefault(row["origin"], {"origin": row["origin"], "entries": 0, "size_bytes": 0, "sharing": 0})
        for field in ("entries", "size_bytes", "sharing"):
            total[field] += row[field]
    return sorted(totals.values(), key=lambda total: -total["entries"])


@cli.command("ls")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_(cache_dir: Path | None, as_json: bool) -> None:
    """List entries, least recently used first."""
    from .._maintenance import list_entries  # noqa: PLC0415
    root = root_of(cache_dir)
    listing = list_entries(root)  # refuses, in one line, a root that is not ours
    if as_json:
        say(json.dumps([asdict(info) for info in listing], indent=2))
        return
    # Plain columns, not a rich table: 10,000 rows in well under a second.
    rows = [("key", "kind", "size", "last used", "wasmtime", "origin", "source")]
    rows += [(info.key[:16], info.kind, human(info.size),
              time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used)), info.wasmtime_version,
              f"{info.origin} {info.level}" if info.level else info.origin, one_line(info.source))
             for info in listing]  # (a source name's newline or ESC would break the table, or the terminal)
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    say("\n".join("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                             *(row[i].ljust(widths[i]) for i in range(3, 6)), row[6]]).rstrip() for row in rows))


@cli.command()
@cache_dir_option
@click.option("--max-size", metavar="SIZE", help="Evict down to this size (512M, 2G); default: the configured limit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gc(cache_dir: Path | None, max_size: str | None, as_json: bool) -> None:
    """Evict least recently used entries; reap temp files of dead writers; say why any over the limit stay."""
    from .._core import resolve_max_size  # noqa: PLC0415
    from .._maintenance import collect_garbage_locked  # noqa: PLC0415

    # --max-size given: $WASMCACHE_MAX_SIZE is not consulted (a bad value there must not stop this).
    report = collect_garbage_locked(root_of(cache_dir), resolve_max_size(max_size))
    if as_json:
        say(json.dumps(asdict(report)))
        return
    say(f"evicted {count(report.evicted_entries, 'entry', 'entries')}, freed {human(report.freed_bytes)}, "
        f"reaped {count(report.reaped_temp_files, 'temp file', 'temp files')}; "
        f"{count(report.entries, 'entry', 'entries')}, {human(report.size_bytes)} remain")
    if report.set_aside:
        say(f"set aside {report.set_aside} entry file(s) no record vouches for (in quarantine/ for a day)")
    if report.not_evicted:
        say(f"{count(report.not_evicted, 'entry stays', 'entries stay')} over the limit: {_why_they_stay(report)}")


def _why_they_stay(report: GcReport) -> str:
    """Why gc left entries it meant to evict, each cause in its own words."""
    from .._core import immutable_fix  # noqa: PLC0415

    why = []
    if report.unwritable_namespaces:
        from .._maintenance import unwritable_cause  # noqa: PLC0415

        for path in report.unwritable_namespaces:
            cause, fix, _ = unwritable_cause(path)
            why.append(f"{path} cannot be written ({cause}; fix: {fix})")
    if report.unremovable:
        more = f" and {len(report.unremovable) - 1} more" if len(report.unremovable) > 1 else ""
        why.append(f"{report.unremovable[0]}{more} refused to go ({immutable_fix(report.unremovable[0])})")
    if report.held_by_writers:
        why.append(f"{report.held_by_writers} held by a writer now (run it again once the writer is done)")
    return "; ".join(why)


@cli.command()
@cache_dir_option
@click.option("--fix", is_flag=True, help="Quarantine corrupt, mismatched and orphaned entries (nothing else is "
              "moved, no mode changed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(cache_dir: Path | None, fix: bool, as_json: bool) -> None:
    """Check every entry's content and engine against its record, and who may write the root's paths; exit 1 if
    anything was found (also after --fix)."""
    from .._core import existing_root  # noqa: PLC0415
    from .._maintenance import list_entries  # noqa: PLC0415
    from .._verify import verify_root  # noqa: PLC0415

    root = root_of(cache_dir)
    existing_root(root, "fix" if fix else "verify")  # a directory that is not ours: refused in verify's words
    # Where each entry came from, read before verify (a --fix moves bad entries away).
    known = {info.path: _origin_of(info) for info in list_entries(root)} if os.path.isdir(root) else {}
    report = verify_root(root, fix=fix)
    if as_json:
        data = asdict(report)
        for finding in data["findings"]:
            finding.update(known.get(finding["path"], {}))
        say(json.dumps({**data, "ok": report.ok, "origins": _origins(root)}, indent=2))
    else:
        for f in report.findings:
            came = known.get(f.path)
            where = (f" (substituted from {came['substituter']}, {came['level']})"
                     if came is not None and came["origin"] == "substituted" else "")
            say(one_line(f"{f.problem}: {f.path}{where}: {f.detail}; fix: {f.fix}"))  # a name cannot fake a line
        state = "ok" if report.ok else count(len(report.findings), "problem", "problems")
        fixed = f", {report.fixed} quarantined" if fix else ""
        fixed += f", {report.rerecorded} re-recorded (a chmod, a copy)" if report.rerecorded else ""
        say(f"checked {count(report.checked, 'entry', 'entries')}: {report.intact} intact, {state}{fixed}")
        for o in _origins(root):
            if o["origin"] == "substituted":
                say(f"  {o['entries']} substituted from {o['substituter']} ({o['level']})")
    if not report.ok:
        sys.exit(1)


@cli.command()
@cache_dir_option
def clear(cache_dir: Path | None) -> None:
    """Remove every entry of every namespace (running programs keep what they mapped); exit 1, saying why, if any
    stay."""
    from .._core import existing_root  # noqa: PLC0415
    from .._maintenance import GcReport, clear_root  # noqa: PLC0415

    root = root_of(cache_dir)
    if not existing_root(root, "clear"):
        say(f"{root}: nothing to clear")
        return
    left = GcReport()  # what stayed, and why, in gc's words
    removed = clear_root(root, left)
    say(f"removed {count(removed, 'entry', 'entries')} from {root}")
    if left.not_evicted:
        say(f"{count(left.not_evicted, 'entry stays', 'entries stay')}: {_why_they_stay(left)}", err=True)
        sys.exit(1)


@cli.command()
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("target")
def inspect(cache_dir: Path | None, as_json: bool, target: str) -> None:
    """Decode a .cwasm file (ours or anyone's) or an entry KEY: engine, flags, kind, size, digest."""
    from .._inspect import inspect_target  # noqa: PLC0415

    info = inspect_target(target, root_of(cache_dir))
    if as_json:
        say(json.dumps(info, indent=2, default=str))
        return
    for name in ("path", "kind", "size", "content_digest", "wasmtime_version", "target", "compiler",
                 "opt_level", "namespace", "key", "source", "wasm_digest", "origin", "substituter", "level"):
        if info.get(name) is not None:
            say(f"{name.replace('_', ' '):18}{info[name]}")
    for group in ("tunables", "shared_flags", "isa_flags"):
        values = info.get(group) or {}
        if values:
            say(f"{group.replace('_', ' ')}:")
            for k, v in values.items():
                say(f"  {k} = {v}")


@cli.command()
@cache_dir_option
@click.option("--pid", type=int, help="Instead: check the .cwasm files mapped by this live process.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(cache_dir: Path | None, pid: int | None, as_json: bool) -> None:
    """Find dangers in the cache root (or in a live process's mapped modules), each with its fix."""
    from .._doctor import (  # noqa: PLC0415
        DANGER,
        INFO,
        WARNING,
        diagnose_pid,
        diagnose_root,
        diagnose_settings,
        embedder_of,
    )

    if pid is not None:
        try:
            mapped = diagnose_pid(pid)
        except FileNotFoundError:
            fail(f"process {pid}: no such process")
        except OSError as exc:
            fail(f"process {pid}: cannot read its memory map: {exc.strerror or exc}")
        danger = any(m.state == "modified-in-place" for m in mapped)
        own = [m for m in mapped if m.origin == "foreign" and m.state != "modified-in-place"]
        if as_json:
            say(json.dumps([asdict(m) for m in mapped], indent=2))
            sys.exit(1 if danger else 0)
        if not mapped:
            say(f"process {pid} maps no Wasmtime compiled module")
        for m in mapped:
            say(f"{m.state:18} {m.origin:8} {m.path}  ({m.detail})")
        # `wasmcache exec` serves Python programs using wasmtime-py; a Rust or C embedder only its author can fix.
        embedder = embedder_of(pid)
        remedy = {
            "wasmtime-py": "run the program under `wasmcache exec` (or WASMCACHE_AUTO=1): its own files are then "
                           "loaded as private snapshots",
            "wasmtime-py, drop-in inactive": "the drop-in is switched on for this process (`wasmcache exec` or "
                           "WASMCACHE_AUTO) but did not activate in it: its Python needs wasmcache's dependencies "
                           "(`pip install blake3 platformdirs` in that environment) and must not run with -S, -I or -E",
        }.get(embedder, "this program embeds Wasmtime itself (not through wasmtime-py), so `wasmcache exec` cannot "
                        "serve it: its cache must publish a new file by rename, never rewrite one in place")
        if danger:
            say(f"fix: restart the process; {remedy}")
        elif own:
            say(f"warning: process {pid} maps {len(own)} file(s) of a program's own cache; whoever rewrites "
                f"one in place crashes it. fix: {remedy}")
        sys.exit(1 if danger else 0)
    from .._dropin_exec import launcher_status  # noqa: PLC0415
    from .._dropin_status import dropin_status  # noqa: PLC0415

    findings = diagnose_settings() + diagnose_root(root_of(cache_dir))
    findings += _substituter_findings(root_of(cache_dir))  # writes nothing: checks refresh in a temporary copy
    # Dangers first, then warnings, then notes: fixes applied top-down converge (a chmod before a re-record).
    order = (DANGER, WARNING, INFO)
    findings.sort(key=lambda f: order.index(f.severity) if f.severity in order else len(order))
    danger = any(f.severity == DANGER for f in findings)
    dropin = dropin_status()
    dropin["exec_launcher"] = launcher_status()  # None: `exec` is served without a Python start
    if as_json:
        # The drop-in's state as a last, informational item (what `wasmcache exec` / WASMCACHE_AUTO do here).
        status = {"severity": "info", "path": dropin["python"], "problem": f"drop-in: {dropin['reason']}",
                  "fix": "nothing to do" if dropin["would_activate"]
                  else "`wasmcache exec CMD`, or export WASMCACHE_AUTO=1",
                  "dropin": dropin}
        say(json.dumps([*(asdict(f) for f in findings), status], indent=2))
    else:
        for f in findings:
            say(one_line(f"{f.severity}: {f.path}: {f.problem}") + "\n" + one_line(f"  fix: {f.fix}"))
        say("no problems found" if not findings else count(len(findings), "finding", "findings"))
        say(f"drop-in: {dropin['reason']}")
        if dropin["exec_launcher"] is not None:
            say(f"exec: {dropin['exec_launcher']}")
    sys.exit(1 if danger else 0)


def _substituter_findings(root: Path) -> list[Any]:
    """One line per configured substituter: reachable, root valid, metadata expiry, rollback relative to
    what this root's consumer already trusts, artifacts fitting this host. Writes nothing anywhere."""
    from .._core import SUBSTITUTERS_DIR, read_record  # noqa: PLC0415
    from .._doctor import DANGER, INFO, WARNING, Diagnosis, SubstituterDiagnosis  # noqa: PLC0415
    from .._public import settings_from_environment  # noqa: PLC0415

    config: list[Diagnosis] = []

    def bad_environment(exc: ConfigError) -> None:
        where, _, problem = str(exc).partition(": ")  # "$WASMCACHE_SUBSTITUTER_ROOTS: what is wrong"
        if not where.startswith("$") or not problem:
            where, problem = "$WASMCACHE_SUBSTITUTERS", str(exc)
        config.append(Diagnosis(WARNING, where, problem, "fix the environment variable (until then only the "
                                "substituters tools declare are asked)"))

    settings = settings_from_environment(bad_environment)
    if settings is None:  # $WASMCACHE_SUBSTITUTERS=none: say what that turns off, if anything
        from importlib.metadata import entry_points  # noqa: PLC0415

        from .._public import ENTRY_POINT_GROUP  # noqa: PLC0415

        names = [point.name for point in entry_points(group=ENTRY_POINT_GROUP)]
        return [Diagnosis(INFO, "$WASMCACHE_SUBSTITUTERS", f"none: the substituters installed tools declare "
                          f"({', '.join(names)}) are not asked", "nothing to do, if that is what you want")
                ] if names else []
    from .._public import declared_substituters  # noqa: PLC0415
    from .._public._client import check_substituters  # noqa: PLC0415 - the client (and tuf): only to check

    broken: list[str] = []  # a tool's package that declares one wasmcache cannot use: a finding, said once
    if settings.declared:
        declared = declared_substituters(log_problem=broken.append)
        settings = settings._replace(substituters=(*settings.substituters, *declared), declared=False)

    # The consumer's trusted metadata is copied, and refreshed only in the copy (see check_substituters).
    checks = check_substituters(settings, state_dir=root / SUBSTITUTERS_DIR, host_section=_default_host_section())
    facts = ("ok", "reachable", "root_valid", "expires", "days_left", "expired", "rolled_back", "artifacts", "fitting")
    out: list[Any] = [*config, *(
        SubstituterDiagnosis(INFO if check.ok else WARNING, check.url, f"substituter ({check.origin}): {check.detail}",
                             "nothing to do" if check.ok else _substituter_fix(check),
                             {name: getattr(check, name) for name in facts})
        for check in checks)]
    out += [Diagnosis(WARNING, where, f"substituter not used: {why}", "its package declares a substituter wasmcache "
                      "cannot use: a miss of its modules compiles locally; tell the tool's author")
            for where, _, why in (problem.partition(": ignored: ") for problem in broken)]
    # Entries a publisher has since revoked (a miscompile fixed in a patch release ...): the cache keeps
    # serving them until they are replaced, so say which, and how.
    revoked = {check.url: check.revoked for check in checks if check.revoked}
    if revoked:
        from .._maintenance import list_entries  # noqa: PLC0415

        for info in list_entries(root):
            record = read_record(info.path.removesuffix(".cwasm") + ".rec")  # type: ignore[arg-type]
            if info.substituter in revoked and record is not None and record[0].content_digest in revoked[
                    info.substituter]:
                out.append(Diagnosis(DANGER, info.path, f"{info.source}: its publisher revoked this precompiled "
                                     f"module ({info.level}, from {info.substituter})",
                                     f"`wasmcache compile --native {info.source}` replaces it (or `wasmcache clear`)"))
    return out


def _default_host_section() -> bytes | None:
    """This host's engine section with wasmtime's default settings (what fits is counted for it)."""
    try:
        import wasmtime  # noqa: PLC0415

        from .._core import engine_identity  # noqa: PLC0415

        return engine_identity(wasmtime.Engine()).section
    except Exception:  # doctor still checks the hosts without this count
        return None


def _substituter_fix(check: Any) -> str:
    """The first fitting advice for a failed substituter check (by its flags, then its words)."""
    detail = check.detail
    advice = [
        (check.rolled_back, ("the host (or a mirror, or someone in between) serves older signed metadata than "
                             "this machine saw: it is refused, and a miss compiles locally; ask the publisher, or use "
                             "another mirror")),
        (check.expired, ("a miss compiles locally until the publisher re-signs "
                        "(`wasmcache publish --out TREE --signing-key KEY.pem` re-signs)")),
        (check.url.startswith("https://") and ("certificate" in detail or "TLS" in detail),
         "a miss compiles locally until this is fixed (a private CA: $WASMCACHE_SUBSTITUTER_CA or $SSL_CERT_FILE)"),
        ("no tree there" in detail, ("check the URL: it should name the directory holding the publisher's `metadata/` "
                                    "and `targets/` (a miss compiles locally meanwhile)")),
        ("too slow" in detail, ("the host answers too slowly to beat a local compile: use a mirror nearer to this "
                               "machine")),
        (check.reachable is False, ("check the URL and that the host is up (a miss compiles locally meanwhile; doctor "
                                   "asks again each run)")),
    ]
    return next((text for fits, text in advice if fits), "a miss compiles locally until this is fixed")
