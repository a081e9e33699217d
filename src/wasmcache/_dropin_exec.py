"""`wasmcache exec CMD ...`: CMD with the drop-in active in every Python process under it.

`exec` becomes CMD (os.execvpe: same pid, argv, stdin/stdout/stderr, signals and exit code) with
an environment that activates the drop-in in every Python process under it, children included:
PYTHONPATH starts with a directory holding a `sitecustomize` (which chains the one it shadows)
and $WASMCACHE_AUTO=1 arms the hook that installs the drop-in when wasmtime is first imported.

This module imports only the standard library at its top (no pathlib, click or wasmtime), so a
launcher can load it by path and exec without importing the package. bin/wasmcache, the native
launcher (src/wasmcache-launcher.c), mirrors `exec_environment` for the plain case without starting
Python at all, from the plan `_plan_for_launcher` leaves beside it.
"""

from __future__ import annotations

# The C module behind `signal`: `signal` itself builds enums (~4 ms of `import enum`) that `exec`,
# which only resets two handlers before it becomes CMD, has no use for (measured on the drop-in's
# start-up figure). The same functions, the same numbers.
import _signal as signal  # type: ignore[import-not-found]
import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

HOOK_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "_hook")
# The same hook as a zip beside it: what `exec` puts on PYTHONPATH when it can (see hook_entry).
HOOK_ZIP = HOOK_DIR + ".zip"
VERBOSE_VARIABLE = "WASMCACHE_VERBOSE"  # read by _log (a guest's info lines at 1, debug at 2)
_USAGE = "usage: wasmcache exec [--cache-dir DIR] CMD [ARGS]..."


def exec_environment(environ: Mapping[str, str], *, cache_dir: str | None, verbosity: int = 0) -> dict[str, str]:
    """`environ` plus what activates the drop-in in every Python process started with it.

    `verbosity` (1 for `wasmcache -v exec`, 2 for `--debug exec`) reaches every one of them as
    $WASMCACHE_VERBOSE: they print what the drop-in does on stderr, as `wasmcache[PID]: ...`.
    """
    env = dict(environ)
    pythonpath = env.get("PYTHONPATH", "")
    entries = pythonpath.split(os.pathsep)
    if HOOK_DIR not in entries and HOOK_ZIP not in entries:
        # Prepended, the rest kept byte for byte (an empty entry means the current directory).
        env["PYTHONPATH"] = hook_entry() + (os.pathsep + pythonpath if pythonpath else "")
    env["WASMCACHE_AUTO"] = "1"
    # One root for the command and everything it starts, pinned here: a child that changes directory
    # or $HOME must not scatter roots (a relative $WASMCACHE_DIR, the default under ~/.cache).
    import _wasmcache_hook  # noqa: PLC0415 - stdlib only: the root's rules (the default, `~`) live there

    pinned = cache_dir if cache_dir is not None else env.get("WASMCACHE_DIR")
    if not pinned:
        pinned = _wasmcache_hook.xdg_cache_root(env)  # relative with a relative $HOME: made absolute below
    if pinned:
        env["WASMCACHE_DIR"] = os.path.abspath(_wasmcache_hook.expand_user(pinned))  # ValueError: ~nosuchuser
    if verbosity > 0:
        env[VERBOSE_VARIABLE] = str(min(verbosity, 2))
    return env


def hook_entry() -> str:
    """The PYTHONPATH entry that holds the `sitecustomize`: HOOK_ZIP, made once from HOOK_DIR.

    Every Python under `exec` imports that sitecustomize (and the hook module), and a Python of
    another version would write its bytecode (`__pycache__/sitecustomize.cpython-3XX.pyc`) into
    this installation: a guest writes nothing outside the wasmcache root (issue 14). zipimport
    never writes bytecode; the zip carries both modules compiled by this installation's Python,
    so that Python starts as fast as from a directory, and any other compiles them in memory.
    Made by this installation's own Python once, and again whenever a source is not the very file
    it was made from: the zip ends with a stamp of their identities (`hook_stamp`), so an upgrade
    is seen even by an installer that keeps old file times (new files, new inodes); where it
    cannot be written (a read-only installation, where no bytecode can be written either) the
    directory serves.
    """
    sources = _hook_sources()
    try:
        stamp = hook_stamp(sources)
        with open(HOOK_ZIP, "rb") as f:
            if f.seek(0, os.SEEK_END) >= len(stamp):
                f.seek(-len(stamp), os.SEEK_END)
                if f.read() == stamp:
                    return HOOK_ZIP
    except OSError:
        pass
    if not os.access(os.path.dirname(HOOK_ZIP), os.W_OK):
        return HOOK_DIR  # a read-only installation: no import of zipfile on every exec to find that out
    try:
        _write_hook_zip(sources)
    except (OSError, SyntaxError, ValueError):
        return HOOK_DIR
    return HOOK_ZIP


def hook_stamp(sources: tuple[str, ...]) -> bytes:
    """What the hook zip ends with (its archive comment, the last bytes of a zip file): the identity
    (inode, size, modification time in ns) of each source it was made from. The native launcher
    builds the same bytes from the sources in its plan and compares them with the zip's tail."""
    parts = []
    for source in sources:
        st = os.stat(source)
        parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return ("wasmcache-hook-sources " + ";".join(parts)).encode()


def _hook_sources() -> tuple[str, str, str]:
    return os.path.join(HOOK_DIR, "sitecustomize.py"), os.path.join(HOOK_DIR, "_wasmcache_site.py"), _HOOK_MODULE


_HOOK_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "_wasmcache_hook.py")


def _write_hook_zip(sources: tuple[str, ...]) -> None:
    import marshal  # noqa: PLC0415 - once per installation
    import zipfile  # noqa: PLC0415
    from importlib.util import MAGIC_NUMBER  # noqa: PLC0415

    temporary = f"{HOOK_ZIP}.{os.getpid()}.tmp"
    stamp = hook_stamp(sources)  # before reading them: a source replaced meanwhile makes the stamp stale
    try:
        with zipfile.ZipFile(temporary, "w") as archive:
            archive.comment = stamp
            for source in sources:
                name = os.path.basename(source)
                with open(source, "rb") as f:
                    text = f.read()
                code = compile(text, f"{HOOK_ZIP}{os.sep}{name}", "exec", dont_inherit=True)
                # An unchecked hash-based pyc (PEP 552): zipimport takes it as is, for this Python's
                # version only (its magic number); another version falls back to the source beside it.
                pyc = MAGIC_NUMBER + (1).to_bytes(4, "little") + bytes(8) + marshal.dumps(code)
                archive.writestr(name, text)
                archive.writestr(name[: -len(".py")] + ".pyc", pyc)
        os.replace(temporary, HOOK_ZIP)  # whole or not at all, for a Python starting right now
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def exec_command(argv: list[str], *, cache_dir: str | None = None, verbosity: int = 0) -> NoReturn:
    """Become `argv` with the drop-in active in it and every Python process it starts."""
    if not argv:
        _die(2, _USAGE)
    if not argv[0]:
        _die(127, "wasmcache: exec: '': command not found")
    try:
        env = exec_environment(caller_environment(), cache_dir=cache_dir, verbosity=verbosity)
    except FileNotFoundError:  # os.path.abspath of a relative root
        _die(2, "wasmcache: exec: the current directory no longer exists: give the cache root as an absolute path")
    except ValueError as exc:  # a root spelled ~nosuchuser
        _die(2, f"wasmcache: exec: cache root {exc}")
    _plan_for_launcher(verbosity)
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives exec. CMD gets the defaults,
    # as from a shell (`wasmcache exec yes | head` ends by SIGPIPE, not with an EPIPE error).
    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    _become(argv, env)


def caller_environment() -> dict[str, str]:
    """The environment this process was started with, which CMD must get: not `os.environ`, which
    Python's own start-up may have changed (PEP 538 adds LC_CTYPE=C.UTF-8 when it coerces a C or
    POSIX locale). Read from /proc/self/environ where there is one. Not quite byte for byte: entries
    with no name or no `=` are left out, and a name given twice is passed once with its first value
    (what getenv(3) and CPython's os.environ see of it), as the native launcher does."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:  # a name given twice: the first, which getenv(3) and os.environ see
            env.setdefault(os.fsdecode(name), os.fsdecode(value))
    return env


def _become(argv: list[str], env: dict[str, str]) -> NoReturn:
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the point: become CMD, as a shell's exec does
    except FileNotFoundError:
        if _found(argv[0], env):  # the file is there: its #! interpreter (or loader) is not
            _die(127, f"wasmcache: exec: {argv[0]}: cannot execute: required file not found")
        _die(127, f"wasmcache: exec: {argv[0]}: command not found")
    except PermissionError:
        _die(126, f"wasmcache: exec: {argv[0]}: permission denied")
    except OSError as exc:  # a directory, ENAMETOOLONG ...
        if exc.errno == errno.ENOEXEC:
            _exec_as_script(argv, env)
        _die(126, f"wasmcache: exec: {argv[0]}: {exc.strerror or exc}")
    except ValueError:  # a NUL byte in an argument
        _die(126, f"wasmcache: exec: {argv[0]!r}: an argument contains a NUL byte")


def _found(name: str, env: dict[str, str]) -> str | None:
    """Where execvpe found `name`: the first executable file along PATH (an empty entry is the current
    directory, as for execvpe itself; shutil.which would skip it)."""
    places = [name] if os.path.dirname(name) else [os.path.join(d, name) for d in os.get_exec_path(env)]
    return next((p for p in places if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _exec_as_script(argv: list[str], env: dict[str, str]) -> None:
    """An executable file without `#!`: /bin/sh runs it, as from a shell, `env` or execvp(3) (the native
    launcher hands such a file here). Returns only when there is no such file."""
    path = _found(argv[0], env)
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":  # a binary for another machine: its error stands, as in dash
                return
        os.execve("/bin/sh", ["/bin/sh", path, *argv[1:]], env)  # noqa: S606 - what every shell does here
    except OSError:
        return


LAUNCHER = "wasmcache"  # bin/wasmcache: the native launcher (src/wasmcache-launcher.c, built by hatch_build.py)
PYTHON_CLI = ".wasmcache-python"  # beside it: this CLI, where the launcher sends all it does not serve
LAUNCHER_PLAN = ".wasmcache-exec-plan"  # beside both: what the launcher reads to exec without Python


def _plan_for_launcher(verbosity: int = 0) -> None:
    """Leave beside the native launcher what it needs to serve the next `exec` without Python.

    Only when this process is the Python CLI the launcher handed `exec` to (bin/.wasmcache-python,
    with a compiled bin/wasmcache beside it), and the hook is the zip: its path, the platform and the
    zip's sources (the launcher hands `exec` back here when the zip no longer matches them). Best
    effort: where it cannot be left, every `exec` goes through Python, and `-v` says why (as doctor does).
    """
    place = _launcher_plan()
    if place is not None and not _plan_current(*place):
        plan, text = place
        temporary = f"{plan}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
            os.replace(temporary, plan)
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    if verbosity > 0 and (why := launcher_status()) is not None:
        _say(f"wasmcache[{os.getpid()}]: {why}")


def _plan_current(plan: str, text: str) -> bool:
    try:
        with open(plan, encoding="utf-8", errors="surrogateescape") as f:
            return f.read() == text
    except OSError:
        return False


def _launcher_plan() -> tuple[str, str] | None:
    """(the plan's path, its text) when this process is the Python CLI behind a native bin/wasmcache."""
    if not sys.argv or os.path.basename(sys.argv[0]) != PYTHON_CLI or not _native_launcher_beside():
        return None
    if hook_entry() != HOOK_ZIP:
        return None
    text = "\n".join((HOOK_ZIP, sys.platform, *_hook_sources())) + "\n"
    return os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), LAUNCHER_PLAN), text


def _native_launcher_beside() -> bool:
    try:
        with open(os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), LAUNCHER), "rb") as f:
            return f.read(2) != b"#!"  # built without a C compiler: bin/wasmcache is this CLI
    except OSError:
        return False


def launcher_status() -> str | None:
    """Why `wasmcache exec` starts Python (~10 ms) instead of being served by the native launcher (~1 ms),
    or None when it is served (or this is not an installed `wasmcache`). For `doctor` and `exec -v`."""
    if not sys.argv:
        return None
    here = os.path.dirname(os.path.realpath(sys.argv[0]))
    name = os.path.basename(sys.argv[0])
    if name == LAUNCHER and os.path.isfile(os.path.join(here, PYTHON_CLI)) and not _native_launcher_beside():
        return ("`exec` starts Python each time (~10 ms): bin/wasmcache is the Python CLI, built without the "
                "native launcher (no C compiler, or WASMCACHE_NO_LAUNCHER=1; reinstall where `cc` works)")
    if name != PYTHON_CLI or not _native_launcher_beside():
        return None
    fix = "run `wasmcache exec true` once as the user who installed wasmcache"
    if hook_entry() != HOOK_ZIP:
        return (f"`exec` starts Python each time (~10 ms): {os.path.dirname(HOOK_ZIP)} is read-only, so the hook "
                f"zip the native launcher needs cannot be made there; {fix}")
    place = _launcher_plan()
    if os.access(here, os.W_OK) or (place is not None and _plan_current(*place)):
        return None  # the plan is there, or the next `exec` leaves it
    return (f"`exec` starts Python each time (~10 ms): the native launcher's plan cannot be left in {here} "
            f"(read-only); {fix}")


def _say(line: str) -> None:
    """`line` on stderr, a name in it byte for byte (as a shell prints it); nothing if stderr is closed."""
    import _wasmcache_hook  # noqa: PLC0415 - the one rule for printing a name's bytes

    try:
        sys.stderr.flush()
        os.write(2, _wasmcache_hook.line_bytes(line + "\n"))
    except (OSError, ValueError, AttributeError):
        pass


def _die(code: int, message: str) -> NoReturn:
    _say(message)
    os._exit(code)  # nothing to clean up, and stderr may be closed


def parse_exec_args(args: list[str]) -> tuple[str | None, list[str], int] | None:
    """`[--cache-dir DIR | --cache-dir=DIR] [-v | --debug] [--] CMD ...` as (cache_dir, CMD, verbosity);
    None for anything else (help, an unknown option, no CMD): the caller reports it."""
    cache_dir = None
    verbosity = 0
    while args and args[0].startswith("-"):
        head = args[0]
        if head == "--":
            args = args[1:]
            break
        if head in ("-v", "--verbose", "--debug"):
            verbosity, args = max(verbosity, 2 if head == "--debug" else 1), args[1:]
            continue
        if head == "--cache-dir" and len(args) >= 2 and args[1]:
            cache_dir, args = args[1], args[2:]
        elif head.startswith("--cache-dir=") and head.partition("=")[2]:
            cache_dir, args = head.partition("=")[2], args[1:]
        else:
            return None
    return (cache_dir, args, verbosity) if args else None


def exec_main(args: list[str]) -> NoReturn:
    """`python -m wasmcache._dropin_exec [--cache-dir DIR] [--] CMD ...`: exec without the CLI's imports."""
    parsed = parse_exec_args(args)
    if parsed is None:
        if args[:1] in (["-h"], ["--help"]):
            sys.stdout.write(f"{_USAGE}\n\nRun CMD with the drop-in active in every Python process under it\n")
            sys.exit(0)
        _die(2, f"wasmcache: exec: expected [--cache-dir DIR] CMD [ARGS]...\n{_USAGE}")
    cache_dir, command, verbosity = parsed
    exec_command(command, cache_dir=cache_dir, verbosity=verbosity)


if __name__ == "__main__":  # `python -m wasmcache._dropin_exec CMD ...`: exec without the CLI's imports
    exec_main(sys.argv[1:])
