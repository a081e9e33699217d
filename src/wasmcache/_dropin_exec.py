"""`wasmcache exec CMD ...` and the drop-in's diagnostics.

`exec` becomes CMD (os.execvpe: same pid, argv, stdin/stdout/stderr, signals and exit code) with
an environment that activates the drop-in in every Python process under it, children included:
PYTHONPATH starts with a directory holding a `sitecustomize` (which chains the one it shadows)
and $WASMCACHE_AUTO=1 arms the hook that installs the drop-in when wasmtime is first imported.

This module imports only the standard library at its top (no pathlib, click or wasmtime), so a
launcher can load it by path and exec without importing the package.
"""

from __future__ import annotations

# The C module behind `signal`: `signal` itself builds enums (~4 ms of `import enum`) that `exec`,
# which only resets two handlers before it becomes CMD, has no use for (measured on the drop-in's
# start-up figure). The same functions, the same numbers.
import _signal as signal  # type: ignore[import-not-found]
import os
import site
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

HOOK_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "_hook")
PTH_NAME = "wasmcache-auto.pth"
_USAGE = "usage: wasmcache exec [--cache-dir DIR] CMD [ARGS]..."


def exec_environment(environ: Mapping[str, str], *, cache_dir: str | None) -> dict[str, str]:
    """`environ` plus what activates the drop-in in every Python process started with it."""
    env = dict(environ)
    pythonpath = env.get("PYTHONPATH", "")
    if HOOK_DIR not in pythonpath.split(os.pathsep):
        # Prepended, the rest kept byte for byte (an empty entry means the current directory).
        env["PYTHONPATH"] = HOOK_DIR + (os.pathsep + pythonpath if pythonpath else "")
    env["WASMCACHE_AUTO"] = "1"
    if cache_dir is not None:
        env["WASMCACHE_DIR"] = os.path.abspath(os.path.expanduser(cache_dir))
    return env


def exec_command(argv: list[str], *, cache_dir: str | None = None) -> NoReturn:
    """Become `argv` with the drop-in active in it and every Python process it starts."""
    if not argv:
        _die(2, _USAGE)
    env = exec_environment(os.environ, cache_dir=cache_dir)
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
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the point: become CMD, as a shell's exec does
    except FileNotFoundError:
        _die(127, f"wasmcache: exec: {argv[0]}: command not found")
    except PermissionError:
        _die(126, f"wasmcache: exec: {argv[0]}: permission denied")
    except OSError as exc:  # ENOEXEC, a directory, ENAMETOOLONG ...
        _die(126, f"wasmcache: exec: {argv[0]}: {exc.strerror or exc}")
    except ValueError:  # a NUL byte in an argument
        _die(126, f"wasmcache: exec: {argv[0]!r}: an argument contains a NUL byte")


def _die(code: int, message: str) -> NoReturn:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os._exit(code)  # nothing to clean up, and stderr may be closed


def parse_exec_args(args: list[str]) -> tuple[str | None, list[str]] | None:
    """`[--cache-dir DIR | --cache-dir=DIR] [--] CMD ...` as (cache_dir, CMD); None for anything
    else (help, an unknown option, no CMD): the caller reports it."""
    cache_dir = None
    while args and args[0].startswith("-"):
        head = args[0]
        if head == "--":
            args = args[1:]
            break
        if head == "--cache-dir" and len(args) >= 2 and args[1]:
            cache_dir, args = args[1], args[2:]
        elif head.startswith("--cache-dir=") and head.partition("=")[2]:
            cache_dir, args = head.partition("=")[2], args[1:]
        else:
            return None
    return (cache_dir, args) if args else None


def exec_main(args: list[str]) -> NoReturn:
    """`python -m wasmcache._dropin_exec [--cache-dir DIR] [--] CMD ...`: exec without the CLI's imports."""
    parsed = parse_exec_args(args)
    if parsed is None:
        if args[:1] in (["-h"], ["--help"]):
            sys.stdout.write(f"{_USAGE}\n\nRun CMD with the drop-in active in every Python process under it\n")
            sys.exit(0)
        _die(2, f"wasmcache: exec: expected [--cache-dir DIR] CMD [ARGS]...\n{_USAGE}")
    cache_dir, command = parsed
    exec_command(command, cache_dir=cache_dir)


# --- diagnostics ----------------------------------------------------------------------------------


def _site_dirs() -> list[str]:
    dirs = list(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def dropin_status(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Whether this Python would activate the drop-in, and why (for `wasmcache doctor`).

    Keys: ``active`` (in this process), ``root`` (of the active one), ``auto`` ($WASMCACHE_AUTO
    asks for it), ``disabled`` ($WASMCACHE_DISABLE), ``pth_hook`` (path of the installed startup
    file, or None), ``exec_hook`` (the `exec` hook directory is on PYTHONPATH), ``would_activate``
    (a new process of this Python with this environment activates it when it imports wasmtime),
    ``hook_dir`` and ``reason`` (one line for people).
    """
    env = os.environ if environ is None else environ
    from . import _dropin  # noqa: PLC0415 - light: the core is imported already

    active = _dropin.installed()
    hook = _dropin.hook_module()  # its switches' one reading, shared with the startup hook
    disabled = hook.env_flag(env, "WASMCACHE_DISABLE")
    auto = hook.env_flag(env, "WASMCACHE_AUTO")
    pth = next((os.path.join(d, PTH_NAME) for d in _site_dirs() if os.path.isfile(os.path.join(d, PTH_NAME))), None)
    exec_hook = HOOK_DIR in env.get("PYTHONPATH", "").split(os.pathsep)
    would = auto and not disabled and (pth is not None or exec_hook)
    if disabled:
        reason = "$WASMCACHE_DISABLE is set: the drop-in stays off"
    elif not auto:
        reason = ("$WASMCACHE_AUTO is not on: programs run as they are (use `wasmcache exec CMD`, "
                  "or export WASMCACHE_AUTO=1)")
    elif not would:
        reason = f"$WASMCACHE_AUTO is set but no startup hook is installed for {sys.executable} ({PTH_NAME} missing)"
    elif (problem := _root_problem()) is not None:
        reason = (f"the drop-in activates but cannot use its cache ({problem}): programs' own .cwasm files are "
                  "still never mapped (loaded as copies); nothing is cached")
    else:
        reason = "the drop-in activates when a Python process of this environment imports wasmtime"
    return {
        "active": active is not None and active.active,
        "root": str(active.root) if active is not None and active.active else None,
        "auto": auto,
        "disabled": disabled,
        "pth_hook": pth,
        "exec_hook": exec_hook,
        "would_activate": would,
        "hook_dir": HOOK_DIR,
        "python": sys.executable,
        "reason": reason,
    }


def _root_problem() -> str | None:
    """Why the drop-in's cache root (from the environment) would be refused, without creating it."""
    from ._errors import CacheError  # noqa: PLC0415
    from ._root import has_marker, not_a_root_message, resolve_max_size, resolve_root, unsafe_reason  # noqa: PLC0415

    try:
        resolve_max_size(None)
        root = resolve_root(None)
    except CacheError as exc:
        return str(exc)
    if not os.path.lexists(root) or has_marker(root):
        found = root if os.path.lexists(root) else None
    elif not os.path.isdir(root) or os.listdir(root):
        return not_a_root_message(root)
    else:
        found = root
    if found is not None:
        reason = unsafe_reason(os.stat(found))
        if reason is not None:
            return f"{found} {reason}"
    return None


def classify_cwasm(path: str) -> str:
    """What a (mapped) file is, for `doctor` and `doctor --pid`:

    ``"entry"`` (compiled or downloaded by wasmcache), ``"snapshot"`` (a program's own .cwasm taken
    in by the drop-in), ``"foreign"`` (a Wasmtime artifact outside any wasmcache root, such as a
    program's own cache file: whoever rewrites it in place crashes every process mapping it),
    ``"other"`` (not a Wasmtime artifact, or unreadable). Judged by content, not by name: YoWASP's
    cache files have no suffix.
    """
    from pathlib import Path  # noqa: PLC0415

    from ._elf import ENGINE_SECTION, find_section  # noqa: PLC0415
    from ._layout import ENTRY_SUFFIX, is_namespace_name, key_of, record_path  # noqa: PLC0415
    from ._record import read_record  # noqa: PLC0415

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


if __name__ == "__main__":  # `python -m wasmcache._dropin_exec CMD ...`: exec without the CLI's imports
    exec_main(sys.argv[1:])
