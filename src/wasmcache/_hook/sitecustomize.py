# The startup hook `wasmcache exec` puts on PYTHONPATH for every Python process under it. Every Python
# the command starts parses this file, old ones included, so it is written in syntax Python 2.7 reads:
# 3.10 and later (what wasmcache serves) run the hook proper (_wasmcache_site); an older interpreter
# runs only the sitecustomize this file shadows, and says nothing (issue 14: a guest leaves no trace).
import sys

if sys.version_info >= (3, 10):
    import _wasmcache_site  # type: ignore[import-not-found]  # noqa: F401 - arms the drop-in, chains the shadowed one
else:
    import os

    _here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    _saved = sys.path[:]
    _this = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in _saved if os.path.realpath(p or ".") != _here]
        try:
            import sitecustomize  # noqa: F401 - the one this file shadows, if there is one
        except ImportError:
            pass
    finally:
        sys.path[:] = [p for p in _saved if os.path.realpath(p or ".") != _here]  # the unwrapped run's path
        if "sitecustomize" not in sys.modules and _this is not None:
            sys.modules["sitecustomize"] = _this  # no other: the import of this one completes as usual
