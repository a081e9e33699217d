"""Fresh processes, interleaving and summaries."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = str(Path(__file__).with_name("child.py"))
PYCACHE = Path(__file__).resolve().parent / "results" / "pycache"


def child_env() -> dict[str, str]:
    """The environment of every measured process: bytecode cached as in any real install.

    With PYTHONDONTWRITEBYTECODE set (as in some CI and sandbox environments), every fresh process
    would recompile the modules changed since their last .pyc, ~20 ms that no user pays. The cache
    goes to bench/results/pycache, so the suite writes nothing next to the sources.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


class ChildError(RuntimeError):
    pass


def child_command(spec: dict) -> list[str]:
    return [sys.executable, CHILD, json.dumps(spec)]


def _last_json(stdout: str) -> dict:
    for raw in reversed(stdout.strip().splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line")


def run_child(spec: dict, *, timeout: float = 900, env: dict[str, str] | None = None) -> dict:
    """Run one child to completion; its JSON result plus `wall` (spawn to exit, seen from here).
    `env`: the child's whole environment (default `child_env()`)."""
    started = time.perf_counter()
    proc = subprocess.run(child_command(spec), capture_output=True, text=True, timeout=timeout, check=False,
                          env=child_env() if env is None else env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise ChildError(f"child {spec.get('action', 'load')}/{spec.get('contender')} failed "
                         f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    try:
        out = _last_json(proc.stdout)
    except ValueError:
        raise ChildError(f"child printed no result: {proc.stdout[-500:]!r} {proc.stderr[-2000:]!r}") from None
    out["wall"] = wall
    return out


def run_command(argv: list[str], *, timeout: float = 300) -> float:
    """Wall time of a whole command (for the end-to-end figure); its output is discarded."""
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False, env=child_env())
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise ChildError(f"{' '.join(argv[:3])}... failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def interleave(specs: dict[str, dict], rounds: int, *, warmup: int = 1, on_sample=None,
               env: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Run every contender once per round, in a rotated order (A B C, B C A, ...): drift and
    background load hit every contender alike. `warmup` rounds are run (and `on_sample`d) but
    discarded. `env`: every child's environment (default `child_env()`)."""
    names = list(specs)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(-warmup, rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            spec = specs[name]
            result = run_child(spec() if callable(spec) else spec, env=env)
            if on_sample is not None:
                on_sample(name, result)
            if r >= 0:
                samples[name].append(result)
    return samples


def summarize(values: list[float]) -> dict:
    """Median and spread (min, max, quartiles) of a list of seconds (or bytes)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "samples": values,
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
