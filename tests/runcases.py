"""The differential cases of `run`: one command line for the official `wasmtime run` and `wasmcache run`.

Their stdout and exit code must agree, or differ only where a case says why (`differs`).
The programs are WAT in runcorpus.py.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    """`wasmtime run OPTIONS FILE ARGS` vs `wasmcache run OPTIONS FILE ARGS`.

    `code`: the exit code expected of wasmtime (a control: the case exercises what it says).
    `differs`: why wasmcache deliberately differs, with `our_code` / `our_stdout` what it does instead.
    `data_dir`: a directory holding data.txt is made and `{data}` in options replaced by its path.
    """

    id: str
    program: str
    args: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    code: int = 0
    stdin: str = ""
    env: tuple[tuple[str, str], ...] = ()
    compare_stderr: bool = False
    sort_stdout: bool = False
    differs: str = ""
    our_code: int | None = None
    our_stdout: str | None = None
    file_name: str = ""   # the program's file name, if not `<program>.wasm`
    as_text: bool = False  # give the WAT text file itself to both runners
    reason: str = ""  # what wasmcache's error line says where its words differ from wasmtime's innermost cause


def _c(*args: object, **kwargs: object) -> Case:
    return Case(*args, **kwargs)  # type: ignore[arg-type]


EXIT_CODES = (0, 1, 42, 125, 126, 255, -1)

CASES: tuple[Case, ...] = (
    # stdio, argv, environment, preopens
    _c("hello", "hello", code=1),
    _c("hello-args", "hello", ("a", "-b", "--c"), code=4),
    _c("hello-dashdash-after-file", "hello", ("--", "x"), code=3),
    _c("dashdash-before-file", "hello", ("y",), ("--",), code=2),
    _c("stderr", "stderr", compare_stderr=True),
    _c("stdin-cat", "cat", stdin="line one\nline two\n"),
    _c("stdin-empty", "cat"),
    _c("args", "args", ("one", "two words", "ünïcode", "--flag", "")),
    _c("args-argv0", "args", ("x",), ("--argv0", "custom-name")),
    _c("args-file-in-subdir", "args", ("x",), file_name="sub/dir/args.wasm"),
    _c("args-name-with-spaces-and-brackets", "args", (), file_name="my prog [v2] (copy).wasm"),
    _c("env-explicit", "env", (), ("--env", "A=1", "--env", "B=two words", "--env", "EMPTY=")),
    _c("env-inherit-one", "env", (), ("--env", "FROM_PARENT"), env=(("FROM_PARENT", "parent value"),)),
    _c("env-unset-name-stays-unset", "env", (), ("--env", "SURELY_NOT_SET_ANYWHERE")),
    _c("env-inherit-all", "env", (), ("-S", "inherit-env"), sort_stdout=True),
    _c("env-none-by-default", "env", (), (), env=(("FROM_PARENT", "not passed"),)),
    _c("preopen-mapped", "preopen", (), ("--dir", "{data}::/data")),
    _c("preopen-same-name", "preopen", (), ("--dir=data",)),
    _c("preopen-none", "preopen", code=3),
    _c("write-status", "write-status", code=3),
    # exit codes: 0..125 are the guest's; 126 and above are an error in wasmtime (exit 1)
    *(_c(f"exit-{n}", "exit", (str(n),), ("--invoke", "ex"), code=n if 0 <= n < 126 else 1)
      for n in EXIT_CODES),
    _c("exit-from-start", "exit", code=7),
    _c("bad-exit-126", "bad-exit", code=1),
    # traps: 134, the reason on stderr
    _c("trap-start", "traps", code=134),
    *(_c(f"trap-{name}", "traps", (), ("--invoke", name), code=134)
      for name in ("unreachable", "div0", "overflow", "oob", "stack", "null-call", "convert")),
    _c("trap-in-start-function", "start-trap", code=134),
    # --invoke: every value type as wasmtime parses and prints it
    # one case per value type end to end (every spelling is in VALUE_TEXTS, checked against wasmtime in-process)
    _c("invoke-i32", "values", ("010",), ("--invoke", "i32")),
    _c("invoke-i32-out-of-range", "values", ("2147483648",), ("--invoke", "i32"), code=1),
    _c("invoke-i32-bad-digit", "values", ("1_0",), ("--invoke", "i32"), code=1),
    _c("invoke-i64", "values", ("-9223372036854775808",), ("--invoke", "i64")),
    _c("invoke-f32", "values", ("0.3",), ("--invoke", "f32")),
    _c("invoke-f32-bad", "values", ("0x1p3",), ("--invoke", "f32"), code=1),
    _c("invoke-f64", "values", ("1e21",), ("--invoke", "f64")),
    _c("invoke-two-params", "values", ("40", "2"), ("--invoke", "add")),
    _c("invoke-extra-words-ignored", "values", ("40", "2", "99"), ("--invoke", "add")),
    _c("invoke-too-few", "values", ("40",), ("--invoke", "add"), code=1),
    _c("invoke-mixed", "values", ("-7", "123456789012", "0.3", "2.5"), ("--invoke", "mixed")),
    _c("invoke-multi-value", "values", (), ("--invoke", "multi")),
    _c("invoke-null-funcref", "values", (), ("--invoke", "funcref")),
    _c("invoke-null-externref", "values", (), ("--invoke", "externref")),
    _c("invoke-some-funcref", "values", (), ("--invoke", "some-funcref")),
    _c("invoke-v128-result", "values", (), ("--invoke", "v128")),
    _c("invoke-v128-param-refused", "values", ("1",), ("--invoke", "takes-v128"), code=1),
    _c("invoke-funcref-param-refused", "values", ("0",), ("--invoke", "takes-funcref"), code=1),
    _c("invoke-externref-param-refused", "values", ("0",), ("--invoke", "takes-externref"), code=1),
    _c("invoke-no-results", "values", (), ("--invoke", "nothing")),
    _c("invoke-missing-export", "values", (), ("--invoke", "nope"), code=1),
    _c("invoke-not-a-function", "values", (), ("--invoke", "memory"), code=1),
    # reactors and modules without _start
    _c("reactor-invoke", "reactor", (), ("--invoke", "get")),
    _c("reactor-invoke-arg", "reactor", ("21",), ("--invoke", "twice")),
    _c("reactor-no-invoke", "reactor"),
    _c("reactor-bad-arg", "reactor", ("x",), ("--invoke", "twice"), code=1,
       differs="wasmcache parses --invoke arguments before running anything, so `_initialize` does not run "
               "(wasmtime runs it, prints its line, then refuses the argument)", our_code=1, our_stdout=""),
    _c("no-start", "no-start"),
    _c("empty-module", "empty"),
    _c("empty-name-export-first", "empty-name"),
    # imports and deadlines
    _c("unknown-import", "unknown-import", code=1),
    _c("unknown-import-trap", "unknown-import", (), ("-W", "unknown-imports-trap=y"), code=1),
    _c("unknown-import-default", "unknown-import", (), ("-W", "unknown-imports-default=y"), code=5),
    _c("timeout-loop", "loop", (), ("-W", "timeout=200ms"), code=134),
    _c("timeout-in-host-call", "sleep", (), ("-W", "timeout=200ms"), code=134),
    _c("timeout-not-reached", "hello", (), ("-W", "timeout=10s"), code=1),
    _c("fuel-exhausted", "loop", (), ("-W", "fuel=1000"), code=134),
    _c("fuel-enough", "hello", (), ("-W", "fuel=100000"), code=1),
    _c("epoch-interruption-alone", "hello", (), ("-W", "epoch-interruption=y"), code=134,
       differs="wasmtime 49 sets no epoch deadline without -W timeout, so the guest traps at its first check; "
               "wasmcache gives such an engine a deadline that never comes (the program runs)",
       our_code=1, our_stdout="hello from wasm\n"),
    _c("engine-options", "hello", (), ("-O", "opt-level=0", "-C", "compiler=cranelift", "-W", "simd=y"), code=1),
    _c("winch", "exit", ("5",), ("-C", "compiler=winch", "--invoke", "ex"), code=5),
    _c("wat-text-file", "hello", (), code=1, as_text=True),
    _c("wat-text-invoke", "values", ("0.3",), ("--invoke", "f32"), as_text=True),
    # usage errors: both exit 2
    _c("unknown-flag", "hello", (), ("--no-such-flag",), code=2),
    _c("unknown-w-option", "hello", (), ("-W", "no-such-thing=y"), code=2),
    _c("bad-timeout", "hello", (), ("-W", "timeout=1.5s"), code=2),
    # components: WASI 0.2 commands
    _c("c-hello", "c-hello"),
    _c("c-args", "c-args", ("one", "two words", "--flag")),
    _c("c-args-argv0", "c-args", ("x",), ("--argv0", "renamed")),
    _c("c-env", "c-env", (), ("--env", "A=1", "--env", "B=two words")),
    _c("c-preopens", "c-preopens", (), ("--dir", "{data}::/data", "--dir", "{data}::/again")),
    _c("c-stdin", "c-cat", stdin="to a component\nand back\n"),
    _c("c-stderr", "c-stderr", compare_stderr=True),
    _c("c-run-returns-err", "c-fail", code=1),
    _c("c-exit-err", "c-exit-err", code=1),
    _c("c-exit-ok", "c-exit-ok"),
    _c("c-trap", "c-trap", code=134),
    _c("c-timeout", "c-loop", (), ("-W", "timeout=200ms"), code=134),
    _c("c-not-a-command", "c-not-a-command", code=1, reason="no exported instance named `wasi:cli/run@0.2"),
    _c("c-invoke-wave", "c-not-a-command", (), ("--invoke", "f()"), code=0,
       differs="wasmtime calls a component function from a WAVE-encoded --invoke; wasmcache run does not "
               "implement WAVE and refuses with one line (exit 2)", our_code=2, our_stdout=""),
)


# Every spelling of an --invoke argument checked against wasmtime: (type, text, wasmtime accepts it).
VALUE_TEXTS: tuple[tuple[str, str, bool], ...] = (
    *(("i32", text, ok) for text, ok in (
        ("010", True), ("-5", True), ("+5", True), ("0x10", True), ("0X7fffffff", True), ("2147483647", True),
        ("-2147483648", True), ("2147483648", False), ("-2147483649", False), ("0xffffffff", False),
        ("1_0", False), (" 5", False), ("5 ", False), ("", False), ("abc", False), ("-0x1", False), ("0x-1", True),
        ("0x+1", True), ("-", False), ("+", False), ("0x", False), ("99999999999x", False), ("x99999999999", False),
        ("-0", True), ("٣", False), ("0b101", False), ("1e3", False))),
    *(("i64", text, ok) for text, ok in (
        ("9223372036854775807", True), ("-9223372036854775808", True), ("9223372036854775808", False),
        ("0x7fffffffffffffff", True), ("0x8000000000000000", False), ("007", True), ("-0x10", False))),
    *(("f32", text, ok) for text, ok in (
        ("0.3", True), ("1e30", True), ("1e-7", True), ("nan", True), ("-nan", True), ("NaN", True), ("inf", True),
        ("-Infinity", True), ("INF", True), ("-0", True), ("1e40", True), (".5", True), ("5.", True), ("1E5", True),
        ("3.4028235e38", True), ("3.4028236e38", True), ("3.40282357e38", True), ("1e-45", True), ("1e-46", True),
        ("7e-46", True), ("16777217", True), ("0.1", True), ("123456.789", True), ("8388609.5", True),
        ("0x1p3", False), ("1_0", False), ("", False), (".", False), ("1e", False), ("e5", False), ("+inf", True),
        ("infinit", False), ("1e+5", True), ("1e-5", True), ("-.5e-3", True), ("00012.50", True),
        ("1.17549435e-38", True), ("1.1754942e-38", True), ("33554431", True), ("1e38", True), ("2e-44", True))),
    *(("f64", text, ok) for text, ok in (
        ("0.1", True), ("1e300", True), ("1e-300", True), ("5e-324", True), ("2e-324", True), ("1e21", True),
        ("-1.5", True), ("1e400", True), ("123456789012345678901234567890", True), ("1.7976931348623157e308", True),
        ("0.000001", True), ("1e-7", True), ("2.5e-5", True), ("nan", True), ("abc", False), ("9007199254740993", True),
        ("2.2250738585072014e-308", True), ("4.9406564584124654e-324", True), ("1e23", True), ("0.3", True))),
)
