"""`wasmcache doctor`: what is dangerous in a cache root, and which mapped modules are about to crash.

`diagnose_root` adds to `verify` what a person debugging a crash wants to know: permissions,
stale temp files, identity mismatches. `diagnose_pid` reads /proc/PID/maps and tells, for every
mapped `.cwasm` (ours or anyone's), whether its file was replaced safely (a new inode at the
path: the process keeps the old one) or modified in place since it was mapped (the process will
execute garbage or die with SIGBUS on its next page fault there).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ._core import (
    DIGESTS_DIR,
    ENGINES_DIR,
    ENTRY_SUFFIX,
    QUARANTINE_DIR,
    Identity,
    existing_root,
    fingerprint_of_section,
    is_entry_name,
    is_memo_name,
    is_namespace_name,
    key_of,
    missing_home_above,
    namespaces,
    parse_engine_memo,
    read_record,
    read_small_file,
    reap_if_dead,
    record_path,
    resolve_max_size,
    unreachable_reason,
)
from ._elf import ENGINE_SECTION, find_section
from ._errors import ConfigError
from ._maintenance import dead_temp_files, small_file_directories, unreadable_fix, unwritable_cause
from ._verify import verify_root

DANGER: Final = "danger"
WARNING: Final = "warning"
INFO: Final = "info"
# Mappings of files no one can open by name and rewrite: memfd (wasmtime's memory images), /dev/zero ...
_ANONYMOUS_FILES: Final = ("/memfd:", "/dev/", "/SYSV", "/[")
# A process's start is known to a clock tick (10 ms) past the boot time: a file written more than this
# after the process started was written while it ran (a rewrite right after start-up included).
_START_SLACK: Final = 0.05


@dataclass(frozen=True)
class Diagnosis:
    severity: str  # danger | warning | info
    path: str
    problem: str
    fix: str


@dataclass(frozen=True)
class SubstituterDiagnosis(Diagnosis):
    """A configured substituter's check: the line above, and its facts for `--json` (`_client.Check`)."""

    check: dict[str, Any] = field(default_factory=dict)  # reachable, root_valid, days_left, rolled_back ...


def _left_by_a_dead_writer(path: str) -> Diagnosis:
    return Diagnosis(WARNING, path, "temp file of a writer that died", "`wasmcache gc` reaps it")


def diagnose_settings() -> list[Diagnosis]:
    """The environment's settings every command reads: one that stops them all is a danger."""
    try:
        max_size = resolve_max_size(None)
    except ConfigError as exc:
        problem = str(exc).removeprefix("$WASMCACHE_MAX_SIZE: ")
        return [Diagnosis(DANGER, "$WASMCACHE_MAX_SIZE", f"{problem}: every load, compile and gc refuses to start",
                          "set it to a size such as 2G or 500M, or unset it (4 GiB)")]
    if max_size < _USEFUL_MAX_SIZE:
        return [Diagnosis(WARNING, "$WASMCACHE_MAX_SIZE", f"{max_size} bytes: compiled modules (a few MiB to hundreds "
                          "each) are evicted as soon as they are stored, so loads compile again",
                          "set it to a size such as 2G or 500M, or unset it (4 GiB)")]
    return []


_USEFUL_MAX_SIZE: Final = 16 << 20  # below this, most compiled modules outgrow the bound on their own


def diagnose_root(root: Path) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    unreachable = unreachable_reason(root)
    if unreachable is not None:  # a finding, not a refusal: doctor is what a user runs to learn why
        fix = ("set WASMCACHE_DIR to a directory this account may write" if missing_home_above(root) is not None
               else "check the cache root (--cache-dir or $WASMCACHE_DIR)")
        return [Diagnosis(DANGER, str(root), f"cache root cannot be reached ({unreachable}): nothing can be cached "
                          "there, and ls, stats, gc, verify and clear refuse it", fix)]
    if not existing_root(root, "diagnose"):  # a directory that is not ours: one line, not advice about its files
        # (an empty directory others could write is refused by every load: verify says so)
        dangers = [Diagnosis(DANGER, f.path, f"{f.problem}: {f.detail}", f.fix)
                   for f in verify_root(root, record_usage=False).findings]
        return dangers or [Diagnosis(INFO, str(root), "cache root does not exist yet, or is empty", "nothing to do")]
    out.extend(_memo_directories(root))
    out.extend(_left_by_a_dead_writer(path) for directory in small_file_directories(root)
               for path in dead_temp_files(directory))
    if (root / QUARANTINE_DIR).is_symlink():
        out.append(Diagnosis(WARNING, str(root / QUARANTINE_DIR), "quarantine is a symbolic link: nothing is ever "
                             "moved through it (a bad entry is removed instead of set aside)",
                             "move the link out of the cache root (wasmcache makes the directory again)"))
    root_writable = os.access(root, os.W_OK)
    if not root_writable:
        out.append(_unwritable(root, "cache root"))
    for namespace in namespaces(root):
        if root_writable and not os.access(namespace.path, os.W_OK):  # else the root's line says it
            out.append(_unwritable(namespace.path, "namespace"))
        scan = namespace.scan()
        out.extend(_left_by_a_dead_writer(e.path) for e in scan.other_temps if reap_if_dead(e.path, dry_run=True))
        for files in scan.keys:
            if files.temps:
                with namespace.key_free(files.key) as free:
                    if free:
                        out.extend(_left_by_a_dead_writer(e.path) for e in files.temps)
            if files.interrupted and files.record is not None:
                with namespace.key_free(files.key) as free:
                    if free:
                        out.append(Diagnosis(INFO, files.record.path, "record of an interrupted publication",
                                             "`wasmcache gc` removes it"))
    # each entry's content checked: what doctor says of an entry is verify's verdict (doctor writes nothing)
    report = verify_root(root, record_usage=False)
    out.extend(Diagnosis(INFO, path, "entry is not the file that was published (a chmod, a copy or a restore since): "
                         "its content checks out", settle(Path(path).parent)) for path in report.changed)
    for f in report.findings:
        severity = WARNING if f.problem in ("orphan", "foreign") else DANGER
        out.append(Diagnosis(severity, f.path, f"{f.problem}: {f.detail}", f.fix))
    return out


def _unwritable(directory: Path, what: str) -> Diagnosis:
    """A root or namespace this user cannot write: a warning with its fix, a note on a read-only file system."""
    cause, fix, meant = unwritable_cause(directory)
    served = "its entries are served, anything new compiled in memory and never stored"
    if meant:
        return Diagnosis(INFO, str(directory), f"{what} is on {cause}: {served}", fix)
    return Diagnosis(WARNING, str(directory), f"{what} cannot be written ({cause}): {served}", fix)


def settle(namespace: Path) -> str:
    """What settles an intact entry whose identity changed, in `namespace`."""
    if os.access(namespace, os.W_OK):
        return "the next load checks it in full once and records it again; `wasmcache verify --fix` does it now"
    return ("every load checks it in full, for this directory cannot be written (a read-only mount, chattr +i ...); "
            "`wasmcache verify --fix` records it once it can be")


def _memo_directories(root: Path) -> list[Diagnosis]:
    """What keeps digests/ or engines/ from doing their work: a link out of the root (never followed), a
    directory this user cannot read or write, a directory where a memo belongs, an engine memo whose
    fingerprint is not its section's (each load then corrects it: loads stay right, every process pays)."""
    out = []
    writable = os.access(root, os.W_OK)
    for name, cost in ((DIGESTS_DIR, "every load digests its input again"),
                       (ENGINES_DIR, "every process probes its engine again")):
        directory = root / name
        if directory.is_symlink():
            out.append(Diagnosis(WARNING, str(directory), f"{name} is a symbolic link (to {os.readlink(directory)}): "
                                 f"memos are never read or written through it; {cost}",
                                 "move the link out of the cache root (wasmcache makes the directory again)"))
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            out.append(Diagnosis(WARNING, str(directory), f"{name} is not a directory: {cost}",
                                 "move it out of the cache root (wasmcache makes the directory again)"))
            continue
        except OSError as exc:
            out.append(Diagnosis(WARNING, str(directory), f"{name} cannot be read ({exc.strerror or exc}): {cost}",
                                 unreadable_fix(directory)))
            continue
        if writable and not os.access(directory, os.W_OK | os.X_OK):
            out.append(Diagnosis(WARNING, str(directory), f"{name} cannot be written: {cost}",
                                 unreadable_fix(directory)))
        for e in entries:
            if not is_memo_name(name, e.name):
                continue
            if e.is_dir(follow_symlinks=False):
                out.append(Diagnosis(WARNING, e.path, f"a directory where a memo belongs: {cost}",
                                     "move it out of the cache root"))
            elif name == ENGINES_DIR:
                parsed = parse_engine_memo(read_small_file(e.path, 1 << 16) or b"")
                if parsed is not None and fingerprint_of_section(parsed[1]) != parsed[2]:
                    out.append(Diagnosis(WARNING, e.path, "engine memo names a fingerprint that is not its engine's "
                                         "(edited or damaged): each process that reads it corrects it for itself",
                                         "remove it (wasmcache writes it again at the next load)"))
    return out


# --- live processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MappedFile:
    path: str
    inode: int
    device: str
    state: str  # intact | replaced-safely | modified-in-place | deleted
    detail: str
    ours: bool
    origin: str = "foreign"  # entry | snapshot (wasmcache's) | foreign (a program's own file, rewritable)


def classify_cwasm(path: str) -> str:
    """What a (mapped) file is, for `doctor` and `doctor --pid`:

    ``"entry"`` (compiled or downloaded by wasmcache), ``"snapshot"`` (a program's own .cwasm taken
    in by the drop-in), ``"foreign"`` (a Wasmtime artifact outside any wasmcache root, such as a
    program's own cache file: whoever rewrites it in place crashes every process mapping it),
    ``"other"`` (not a Wasmtime artifact, or unreadable). Judged by content, not by name: YoWASP's
    cache files have no suffix.
    """
    real = Path(os.path.realpath(path))
    if real.name.endswith(ENTRY_SUFFIX) and is_namespace_name(real.parent.name):
        found = read_record(record_path(real.parent, key_of(real.name)))
        if found is not None:
            return "snapshot" if found[0].origin == "snapshot" else "entry"
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return "other"
    try:
        find_section(fd, ENGINE_SECTION)
    except (OSError, ValueError):
        return "other"
    finally:
        os.close(fd)
    return "foreign"


def _boot_time() -> float:
    """When this machine booted, as a wall-clock time: from CLOCK_BOOTTIME to the nanosecond where Linux
    has it (/proc/stat's btime is whole seconds, so a process start was only known to ~1 s)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _process_start(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def diagnose_pid(pid: int) -> list[MappedFile]:
    """Every Wasmtime artifact mapped by process `pid`, and whether its file changed under the mapping.

    Judged by content, not by name (YoWASP's cache files have no suffix): each file-backed
    mapping is opened through /proc/PID/map_files (the mapped inode itself) where we may, and
    kept if it has a `.wasmtime.engine` section.
    """
    maps_path = f"/proc/{pid}/maps"
    with open(maps_path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    started = _process_start(pid)
    # (device, inode) -> (path, highest mapped offset, one address range naming it in map_files, executable)
    seen: dict[tuple[str, int], tuple[str, int, str, bool]] = {}
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or int(parts[4]) == 0:
            continue
        path = parts[5].strip().replace("\\012", "\n")  # the kernel escapes a newline in a path as \012
        if path.startswith(_ANONYMOUS_FILES):
            continue  # memory with no name anyone can open and rewrite (wasmtime's memory images)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        offset, device, inode = int(parts[2], 16), parts[3], int(parts[4])
        key = (device, inode)
        extent = offset + (end - start)
        previous = seen.get(key)
        executable = "x" in parts[1] or (previous is not None and previous[3])
        seen[key] = (path, max(extent, previous[1] if previous else 0),
                     previous[2] if previous else parts[0], executable)
    out = []
    for (device, inode), (path, extent, span, executable) in sorted(seen.items(), key=lambda kv: kv[1][0]):
        deleted = path.endswith(" (deleted)")
        clean = path[: -len(" (deleted)")] if deleted else path
        mapped_file = f"/proc/{pid}/map_files/{span}"
        content = _content_of(mapped_file, clean)
        # A file changed under its mapping is reported only where it ran code and is not some other
        # program or library (ELF without an engine section): a rewritten artifact may have lost its
        # header, but a data file, a font cache or a rebuilt .so is not ours to judge.
        if content != "artifact" and not (executable and content != "elf"
                                          and _changed_under(mapped_file, extent, started)):
            continue
        if deleted:  # gone from its directory: a namespace says it was ours
            ours = is_namespace_name(Path(clean).parent.name) and is_entry_name(Path(clean).name)
            origin = "entry" if ours else "foreign"
        else:
            origin = classify_cwasm(clean)
        if origin == "other":
            origin = "foreign"  # an artifact by content, or a file rewritten under its mapping
        mapped = _judge(pid, clean, device, inode, extent, started, deleted=deleted, ours=origin != "foreign")
        out.append(replace(mapped, origin=origin))
    return out


def embedder_of(pid: int) -> str:
    """Who maps Wasmtime in process `pid`: ``"wasmtime-py"`` (a Python process using wasmtime-py's
    library, which `wasmcache exec` can serve) or ``"other"`` (a Rust or C embedder, a CLI ...)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return "other"
    python = any("/libpython" in p or os.path.basename(p).startswith("python") for p in paths)
    try:
        python = python or os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("python")
    except OSError:
        pass
    wasmtime_py = any(p.endswith("_libwasmtime.so") and f"{os.sep}wasmtime{os.sep}" in p for p in paths)
    if not (python and wasmtime_py):
        return "other"
    import _wasmcache_hook  # noqa: PLC0415 - the switches' one reading

    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            variables = dict(os.fsdecode(v).split("=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError:
        variables = {}
    switched_on = _wasmcache_hook.auto_enabled(variables)
    # The drop-in never maps a program's own file: one that does, with the switch on, never activated.
    return "wasmtime-py, drop-in inactive" if switched_on else "wasmtime-py"


def _changed_under(mapped: str, extent: int, started: float) -> bool:
    """A mapped file truncated below what is mapped, or written since the process started: whatever
    it was (its header may be gone), the process is about to run garbage or die with SIGBUS."""
    try:
        st = os.stat(mapped)
    except OSError:
        return False
    truncated = st.st_size + os.sysconf("SC_PAGE_SIZE") <= extent
    return truncated or max(st.st_mtime, st.st_ctime) > started + _START_SLACK


def _content_of(mapped: str, path: str) -> str:
    """What the mapped file holds (through map_files when readable, else its path): ``"artifact"``
    (an ELF with a `.wasmtime.engine` section), ``"elf"`` (another ELF: a library, a program),
    ``"other"``; an unreadable file named like an entry counts as an artifact."""
    for candidate in (mapped, path):
        try:
            fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            find_section(fd, ENGINE_SECTION)
        except (OSError, ValueError):
            try:
                return "elf" if os.pread(fd, 4, 0) == b"\x7fELF" else "other"
            except OSError:
                return "other"
        finally:
            os.close(fd)
        return "artifact"
    return "artifact" if path.endswith(ENTRY_SUFFIX) else "other"


def _judge(pid: int, path: str, device: str, inode: int, extent: int, started: float, *, deleted: bool,
           ours: bool) -> MappedFile:
    # The mapped inode itself, through /proc/PID/map_files when we may read it, else by path.
    try:
        st: os.stat_result | None = os.stat(path)
    except OSError:
        st = None
    if deleted or st is None or st.st_ino != inode:
        state = "deleted" if st is None else "replaced-safely"
        detail = ("the path now names another file; the process keeps the inode it mapped"
                  if st is not None else "the file was removed; the process keeps the inode it mapped")
        mapped = _mapped_inode_stat(pid, inode)
        if mapped is not None and mapped.st_size < extent and extent - mapped.st_size >= os.sysconf("SC_PAGE_SIZE"):
            return MappedFile(path, inode, device, "modified-in-place", "the mapped inode was truncated: SIGBUS ahead",
                              ours)
        return MappedFile(path, inode, device, state, detail, ours)
    page = os.sysconf("SC_PAGE_SIZE")
    if st.st_size + page <= extent:
        return MappedFile(path, inode, device, "modified-in-place",
                          f"truncated to {st.st_size} bytes below the mapped {extent}: SIGBUS ahead",
                          ours)
    if ours:
        found = read_record(record_path(Path(path).parent, key_of(Path(path).name)))
        if found is not None and found[0].identity is not None:
            # wasmcache wrote this file and recorded its identity after the final rename: a match
            # means the very file that was published, whatever its times (a first run compiles,
            # publishes, then maps it: its mtime is after the process start, and it is intact).
            if found[0].identity == Identity.of(st):
                return MappedFile(path, inode, device, "intact", "the entry wasmcache published, unchanged", ours)
            return MappedFile(path, inode, device, "modified-in-place",
                              "the entry changed after it was published (same inode, new size/mtime/ctime)", ours)
    changed = max(st.st_mtime, st.st_ctime)
    if changed > started + _START_SLACK:
        when = time.strftime("%H:%M:%S", time.localtime(changed))
        return MappedFile(path, inode, device, "modified-in-place",
                          f"written at {when}, after the process started: if that was after the process mapped it "
                          "(the file cannot tell), its mapped code may be garbage", ours)
    return MappedFile(path, inode, device, "intact", "unchanged since the process started", ours)


def _mapped_inode_stat(pid: int, inode: int) -> os.stat_result | None:
    try:
        with os.scandir(f"/proc/{pid}/map_files") as it:
            for e in it:
                try:
                    st = os.stat(e.path)
                except OSError:
                    continue
                if st.st_ino == inode:
                    return st
    except OSError:
        return None
    return None
