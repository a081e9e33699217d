"""The startup hook proper, imported by the `sitecustomize` `wasmcache exec` puts on PYTHONPATH (Python 3.10+).

It arms the drop-in (activated when wasmtime is first imported, see _wasmcache_hook) and then
runs the `sitecustomize` this one shadows, if the path has another, so a venv's or a
distribution's own start-up code keeps running exactly as before.

`exec` puts it on the path as `wasmcache/_hook.zip` beside the package, with the hook module and
both compiled by the installation's own Python (see `_dropin_exec.hook_entry`): zipimport reads
their bytecode and never writes any, so a Python of another version compiles them in memory and
leaves nothing in this installation (issue 14). This directory serves where the zip cannot be made.
Runs in every Python process under `exec`: standard library only, and not `importlib.util`
(which costs ~5 ms at start-up, through contextlib).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # `typing` costs ~8 ms at start-up, in every Python process under `wasmcache exec`
if TYPE_CHECKING:
    from typing import Any


def _module_for(spec: Any) -> Any:
    """What importlib.util.module_from_spec returns, without importing importlib.util."""
    module = spec.loader.create_module(spec) if hasattr(spec.loader, "create_module") else None
    if module is None:
        module = type(sys)(spec.name)
    module.__spec__, module.__loader__ = spec, spec.loader
    if spec.has_location:
        module.__file__ = spec.origin
    if spec.submodule_search_locations is not None:
        module.__path__ = spec.submodule_search_locations
    return module


def _leave_the_path(here: str) -> None:
    """Take this hook's own entries (the zip `exec` put on PYTHONPATH) off sys.path: its modules are
    loaded, and the program then sees the sys.path of an unwrapped run (issue 14: a guest leaves no
    trace), nor does each of its imports search our zip first. PYTHONPATH itself stays as it is, so
    every process the program starts runs this hook too. An entry is ours if it is the same file
    (one stat per entry: os.path.realpath would lstat each of its components)."""
    try:
        st = os.stat(here)
    except OSError:
        return
    ours = (st.st_dev, st.st_ino)

    def is_ours(entry: str) -> bool:
        try:
            other = os.stat(entry or ".")
        except (OSError, ValueError, TypeError):
            return False
        return (other.st_dev, other.st_ino) == ours

    for entry in [p for p in sys.path if is_ours(p)]:
        sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)


def _chain() -> None:
    """Run the `sitecustomize` this one shadows, if sys.path (without ours) has one."""
    # importlib.machinery's PathFinder is this class, already loaded at start-up: `import importlib`
    # would cost every Python process under `exec` ~0.3 ms for it.
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if finder is None:
        import importlib.machinery  # noqa: PLC0415

        finder = importlib.machinery.PathFinder

    spec = finder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = _module_for(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)  # its errors surface as site.py reports any sitecustomize's


def _hook(here: str) -> Any:
    """The hook module of the installation this file belongs to (this Python's or not)."""
    module = sys.modules.get("_wasmcache_hook")
    if module is not None:
        return module
    if os.path.isfile(here):  # on the path as the zip, which holds the hook too
        import _wasmcache_hook  # noqa: PLC0415

        return _wasmcache_hook
    # From the directory: the hook beside the package, loaded without writing bytecode (this
    # Python may be another version than the installation's: it must leave nothing there).
    import importlib.machinery  # noqa: PLC0415

    class _NoBytecode(importlib.machinery.SourceFileLoader):
        def set_data(self, *_args: Any, **_kwargs: Any) -> None:
            pass  # reads a .pyc already there, never writes one

    path = os.path.join(os.path.dirname(os.path.dirname(here)), "_wasmcache_hook.py")
    loader = _NoBytecode("_wasmcache_hook", path)
    module = _module_for(importlib.machinery.ModuleSpec("_wasmcache_hook", loader, origin=path))
    module.__spec__.has_location = True
    module.__file__ = path
    sys.modules["_wasmcache_hook"] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules["_wasmcache_hook"]
        raise
    return module


def _main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if "WASMCACHE_AUTO" in os.environ:  # the hook judges its value (its words live there)
        try:
            _hook(here).arm()
        except Exception as exc:  # start-up code must never stop the program
            sys.stderr.write(f"wasmcache[{os.getpid()}]: warning: startup hook failed: {type(exc).__name__}: {exc}\n")
    _leave_the_path(here)
    _chain()


_main()
