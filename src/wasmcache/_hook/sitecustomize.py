"""The startup hook `wasmcache exec` puts on PYTHONPATH for every Python process under it.

It arms the drop-in (activated when wasmtime is first imported, see _wasmcache_hook) and then
runs the `sitecustomize` this one shadows, if the path has another, so a venv's or a
distribution's own start-up code keeps running exactly as before.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # `typing` costs ~8 ms at start-up, in every Python process under `wasmcache exec`
if TYPE_CHECKING:
    from typing import Any


def _chain(here: str) -> None:
    import importlib.machinery  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    def other(entry: str) -> bool:
        try:
            return os.path.realpath(entry or ".") != here
        except (OSError, ValueError):
            return True

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [p for p in sys.path if other(p)])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)  # its errors surface as site.py reports any sitecustomize's


def _hook(path: str) -> Any:
    """The hook module beside the wasmcache package this file belongs to (this Python's or not).

    Loaded without writing bytecode: this Python may be another version than the one wasmcache
    was installed for, and a guest writes nothing into someone else's installation (issue 14).
    """
    import importlib.machinery  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    module = sys.modules.get("_wasmcache_hook")
    if module is None:

        class _NoBytecode(importlib.machinery.SourceFileLoader):
            def set_data(self, *_args: Any, **_kwargs: Any) -> None:
                pass  # reads a .pyc already there, never writes one

        loader = _NoBytecode("_wasmcache_hook", path)
        spec = importlib.util.spec_from_file_location("_wasmcache_hook", path, loader=loader)
        if spec is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["_wasmcache_hook"] = module
        loader.exec_module(module)
    return module


def _main() -> None:
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    if "WASMCACHE_AUTO" in os.environ:  # the hook judges its value (its words live there)
        try:
            _hook(os.path.join(os.path.dirname(os.path.dirname(here)), "_wasmcache_hook.py")).arm()
        except Exception as exc:  # start-up code must never stop the program
            sys.stderr.write(f"wasmcache[{os.getpid()}]: warning: startup hook failed: {type(exc).__name__}: {exc}\n")
    _chain(here)


_main()
