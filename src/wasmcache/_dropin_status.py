"""What `wasmcache doctor` says about the drop-in: would this Python activate it, and why (not)."""

from __future__ import annotations

import os
import site
import sys
from typing import TYPE_CHECKING, Any

from ._dropin_exec import HOOK_DIR, HOOK_ZIP

if TYPE_CHECKING:
    from collections.abc import Mapping

PTH_NAME = "wasmcache-auto.pth"


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
    import _wasmcache_hook  # noqa: PLC0415 - its switches' one reading, shared with the startup hook

    from . import _dropin  # noqa: PLC0415 - light: the core is imported already

    active = _dropin.installed()
    disabled = _wasmcache_hook.env_flag(env, "WASMCACHE_DISABLE")
    auto = _wasmcache_hook.env_flag(env, "WASMCACHE_AUTO")
    pth = next((os.path.join(d, PTH_NAME) for d in _site_dirs() if os.path.isfile(os.path.join(d, PTH_NAME))), None)
    exec_hook = bool({HOOK_DIR, HOOK_ZIP} & set(env.get("PYTHONPATH", "").split(os.pathsep)))
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
    from ._core import has_marker, not_a_root_message, resolve_max_size, resolve_root, unsafe_reason  # noqa: PLC0415
    from ._errors import CacheError  # noqa: PLC0415

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
