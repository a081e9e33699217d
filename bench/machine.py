"""What the numbers were measured on (embedded in the JSON and the plot)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git(repo: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "src"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}{' + uncommitted src changes' if dirty else ''}"


def describe(repo: Path) -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    uname = os.uname()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gib": _mem_total_gib(),
        "machine": uname.machine,
        "kernel": f"{uname.sysname} {uname.release}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "wasmtime": _version("wasmtime"),
        "wasmcache": _version("wasmcache"),
        "wasmcache_git": _git(repo),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def one_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['memory_gib']} GiB, "
            f"{machine['kernel']}, {machine['python']}, wasmtime {machine['wasmtime']}, "
            f"wasmcache {machine['wasmcache']} ({machine['wasmcache_git']}), {machine['date_utc']}")
