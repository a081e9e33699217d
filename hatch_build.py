"""Builds bin/wasmcache, the native launcher (src/wasmcache-launcher.c), into the wheel.

`wasmcache exec CMD` must cost CMD a few milliseconds, less than a Python start (issue 14, item 7),
so bin/wasmcache is a small C program that serves `exec` itself and hands every other command to the
Python CLI, bin/.wasmcache-python (src/wasmcache-cli.py). Where no C compiler works (no `cc`, or
$WASMCACHE_NO_LAUNCHER=1), bin/wasmcache is the Python CLI itself: everything works, `exec` pays a
Python start, and the build says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from packaging.tags import sys_tags  # hatchling's own dependency

SOURCE = "src/wasmcache-launcher.c"
PYTHON_CLI = "src/wasmcache-cli.py"


class LauncherHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        build_data["shared_scripts"][PYTHON_CLI] = ".wasmcache-python"
        self._directory = tempfile.mkdtemp(prefix="wasmcache-launcher-")
        launcher = self._compile()
        if launcher is not None and version == "standard":  # a native program: this platform's wheel, any Python 3
            build_data["tag"] = f"py3-none-{_platform_tag()}"
        if launcher is None:  # the same script under the command's name (a copy: one source, one name)
            launcher = shutil.copy(os.path.join(self.root, PYTHON_CLI), os.path.join(self._directory, "wasmcache"))
        build_data["shared_scripts"][launcher] = "wasmcache"

    def _compile(self) -> str | None:
        if os.environ.get("WASMCACHE_NO_LAUNCHER") == "1":
            self.app.display_warning("WASMCACHE_NO_LAUNCHER=1: bin/wasmcache is the Python CLI")
            return None
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if compiler is None:
            self.app.display_warning("no C compiler: bin/wasmcache is the Python CLI (`exec` pays a Python start)")
            return None
        output = os.path.join(self._directory, "wasmcache")
        command = [*compiler.split(), "-O2", "-Wall", "-o", output, os.path.join(self.root, SOURCE)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)  # noqa: S603
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            self.app.display_warning(f"the launcher did not compile ({exc}; {detail.decode(errors='replace').strip()}):"
                                     " bin/wasmcache is the Python CLI (`exec` pays a Python start)")
            return None
        return output

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:  # noqa: ARG002 - the interface's
        if getattr(self, "_directory", None) is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def _platform_tag() -> str:
    # As hatchling's own infer_tag: the first platform that is not a manylinux or musllinux promise.
    return next(t.platform for t in sys_tags() if "manylinux" not in t.platform and "musllinux" not in t.platform)
