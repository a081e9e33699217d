"""Small WASI programs in WAT for the `run` tests: core modules (preview 1) and WASI 0.2 components.

Each program is text here and compiled with `wasmtime.wat2wasm` (component-model WAT included),
so no toolchain and no binaries are checked in. `PROGRAMS` maps a name to its WAT; the cases
that run them through both CLIs are in runcases.py.
"""

from __future__ import annotations

import functools

import wasmtime

# --- core modules (WASI preview 1) ----------------------------------------------------------------

_P1_HEAD = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 0..63: iovec and out-parameters; 64..1023: constants; 1024..: buffers
  (data (i32.const 64) "\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $print (param $ptr i32) (param $len i32) (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len))))
  (func $newline (call $print (i32.const 64) (i32.const 1)))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $end (loop $next
      (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func $print_lines (param $ptrs i32) (param $count i32) (local $i i32) (local $s i32)
    (block $end (loop $next
      (br_if $end (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.mul (local.get $i) (i32.const 4)))))
      (call $print (local.get $s) (call $strlen (local.get $s)))
      (call $newline)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  (func $copy (param $from i32) (param $to i32) (local $n i32)
    (block $eof (loop $next
      (i32.store (i32.const 0) (i32.const 4096))
      (i32.store (i32.const 4) (i32.const 4096))
      (br_if $eof (call $fd_read (local.get $from) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $eof (i32.eqz (local.get $n)))
      (drop (call $write (local.get $to) (i32.const 4096) (local.get $n)))
      (br $next))))
"""

_P1_BODIES = {
    # writes one line, exits with argc (so the test sees how many words reached the guest)
    "hello": r"""
  (data (i32.const 100) "hello from wasm\n")
  (func (export "_start")
    (call $print (i32.const 100) (i32.const 16))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (call $proc_exit (i32.load (i32.const 16))))""",
    "stderr": r"""
  (data (i32.const 100) "to stderr\n")
  (func (export "_start") (drop (call $write (i32.const 2) (i32.const 100) (i32.const 10))))""",
    # exits with 10 * errno(fd_write) + bytes written: 3 when stdout takes the write
    "write-status": r"""
  (data (i32.const 100) "hi\n")
  (func (export "_start") (local $errno i32)
    (local.set $errno (call $write (i32.const 1) (i32.const 100) (i32.const 3)))
    (call $proc_exit (i32.add (i32.mul (local.get $errno) (i32.const 10)) (i32.load (i32.const 8)))))""",
    "args": r"""
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 2048) (i32.const 8192)))
    (call $print_lines (i32.const 2048) (i32.load (i32.const 16))))""",
    "env": r"""
  (func (export "_start")
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 2048) (i32.const 16384)))
    (call $print_lines (i32.const 2048) (i32.load (i32.const 16))))""",
    "cat": r"""(func (export "_start") (call $copy (i32.const 0) (i32.const 1)))""",
    # prints the first preopen's guest name, then the content of data.txt in it
    "preopen": r"""
  (data (i32.const 100) "data.txt")
  (data (i32.const 120) "no preopen\n")
  (func (export "_start")
    (if (call $fd_prestat_get (i32.const 3) (i32.const 16))
      (then (call $print (i32.const 120) (i32.const 11)) (call $proc_exit (i32.const 3))))
    (drop (call $fd_prestat_dir_name (i32.const 3) (i32.const 1024) (i32.load (i32.const 20))))
    (call $print (i32.const 1024) (i32.load (i32.const 20)))
    (call $newline)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 0)
                         (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 24))
      (then (call $proc_exit (i32.const 4))))
    (call $copy (i32.load (i32.const 24)) (i32.const 1)))""",
    "exit": r"""
  (func (export "_start") (call $proc_exit (i32.const 7)))
  (func (export "ex") (param i32) (call $proc_exit (local.get 0)))""",
    "traps": r"""
  (table 1 funcref)
  (type $v (func))
  (func $deep (param i32) (result i32) (i32.add (call $deep (local.get 0)) (i32.const 1)))
  (func (export "_start") unreachable)
  (func (export "unreachable") unreachable)
  (func (export "div0") (result i32) (i32.div_s (i32.const 1) (i32.const 0)))
  (func (export "overflow") (result i32) (i32.div_s (i32.const -2147483648) (i32.const -1)))
  (func (export "oob") (result i32) (i32.load (i32.const -1)))
  (func (export "stack") (result i32) (call $deep (i32.const 0)))
  (func (export "null-call") (call_indirect (type $v) (i32.const 0)))
  (func (export "convert") (result i32) (i32.trunc_f32_s (f32.const nan)))""",
    # every value type --invoke can take or print
    "values": r"""
  (func (export "i32") (param i32) (result i32) local.get 0)
  (func (export "i64") (param i64) (result i64) local.get 0)
  (func (export "f32") (param f32) (result f32) local.get 0)
  (func (export "f64") (param f64) (result f64) local.get 0)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "mixed") (param i32 i64 f32 f64) (result f64 f32 i64 i32)
    local.get 3 local.get 2 local.get 1 local.get 0)
  (func (export "multi") (result i32 i64 f32 f64) i32.const -1 i64.const 5 f32.const 0.3 f64.const 0.1)
  (func (export "funcref") (result funcref) ref.null func)
  (func (export "externref") (result externref) ref.null extern)
  (func (export "some-funcref") (result funcref) ref.func $nothing)
  (func $nothing)
  (elem declare func $nothing)
  (func (export "v128") (result v128) v128.const i32x4 1 2 3 4)
  (func (export "takes-v128") (param v128))
  (func (export "takes-funcref") (param funcref))
  (func (export "takes-externref") (param externref))
  (func (export "nothing"))""",
    # a reactor: `_initialize` sets the global that `get` returns
    "reactor": r"""
  (global $g (mut i32) (i32.const 0))
  (data (i32.const 100) "initialized\n")
  (func (export "_initialize") (global.set $g (i32.const 42)) (call $print (i32.const 100) (i32.const 12)))
  (func (export "get") (result i32) global.get $g)
  (func (export "twice") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))""",
    "loop": r"""(func (export "_start") (loop $forever (br $forever)))""",
    # sleeps 5 s inside poll_oneoff (a host call): a deadline must still end it
    "sleep": r"""
  (func (export "_start")
    (i64.store (i32.const 1048) (i64.const 5000000000))
    (drop (call $poll_oneoff (i32.const 1024) (i32.const 1100) (i32.const 1) (i32.const 16))))""",
    # the export named "" is wasmtime's default, before `_start`
    "empty-name": r"""
  (data (i32.const 100) "from the export named \"\"\n")
  (data (i32.const 200) "from _start\n")
  (func (export "") (call $print (i32.const 100) (i32.const 25)))
  (func (export "_start") (call $print (i32.const 200) (i32.const 12)))""",
}

_PLAIN = {
    "no-start": '(module (func (export "f") (result i32) i32.const 1) (memory (export "memory") 1))',
    "empty": "(module)",
    "start-trap": "(module (func $s unreachable) (start $s))",
    "unknown-import": r"""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "env" "missing" (func $missing (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.add (call $missing) (i32.const 5)))))""",
    "bad-exit": r"""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 126))))""",
}


# --- components (WASI 0.2 commands) ----------------------------------------------------------------

_COMPONENT = r"""
(component
  (import "wasi:io/error@0.2.0" (instance $io-error (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (export "output-stream" (type $os (sub resource)))
    (export "input-stream" (type $is (sub resource)))
    (alias outer 1 $error (type $err0))
    (export "error" (type $err (eq $err0)))
    (type $stream-error (variant (case "last-operation-failed" (own $err)) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se)))))
    (export "[method]input-stream.blocking-read"
      (func (param "self" (borrow $is)) (param "len" u64) (result (result (list u8) (error $se)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (alias export $streams "input-stream" (type $input-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os0))
    (export "output-stream" (type $os (eq $os0)))
    (export "get-stdout" (func (result (own $os))))))
  (import "wasi:cli/stderr@0.2.0" (instance $stderr
    (alias outer 1 $output-stream (type $os0))
    (export "output-stream" (type $os (eq $os0)))
    (export "get-stderr" (func (result (own $os))))))
  (import "wasi:cli/stdin@0.2.0" (instance $stdin
    (alias outer 1 $input-stream (type $is0))
    (export "input-stream" (type $is (eq $is0)))
    (export "get-stdin" (func (result (own $is))))))
  (import "wasi:cli/environment@0.2.0" (instance $environment
    (export "get-arguments" (func (result (list string))))
    (export "get-environment" (func (result (list (tuple string string)))))))
  (import "wasi:cli/exit@0.2.0" (instance $exit (export "exit" (func (param "status" (result))))))
  (import "wasi:filesystem/types@0.2.0" (instance $fs-types (export "descriptor" (type (sub resource)))))
  (alias export $fs-types "descriptor" (type $descriptor))
  (import "wasi:filesystem/preopens@0.2.0" (instance $preopens
    (alias outer 1 $descriptor (type $d0))
    (export "descriptor" (type $d (eq $d0)))
    (export "get-directories" (func (result (list (tuple (own $d) string)))))))

  (core module $libc
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 65536))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $ptr i32)
      (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
      (local.get $ptr)))
  (core instance $libc-inst (instantiate $libc))
  (alias core export $libc-inst "memory" (core memory $memory))
  (alias core export $libc-inst "realloc" (core func $realloc))
  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $get-stderr (canon lower (func $stderr "get-stderr")))
  (core func $get-stdin (canon lower (func $stdin "get-stdin")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core func $read (canon lower (func $streams "[method]input-stream.blocking-read") (memory $memory)
                                (realloc $realloc)))
  (core func $get-arguments (canon lower (func $environment "get-arguments") (memory $memory) (realloc $realloc)))
  (core func $get-environment (canon lower (func $environment "get-environment") (memory $memory)
                                           (realloc $realloc)))
  (core func $get-directories (canon lower (func $preopens "get-directories") (memory $memory) (realloc $realloc)))
  (core func $exit (canon lower (func $exit "exit")))
  (core module $main
    (import "env" "memory" (memory 2))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "get-stderr" (func $get-stderr (result i32)))
    (import "host" "get-stdin" (func $get-stdin (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (import "host" "read" (func $read (param i32 i64 i32)))
    (import "host" "get-arguments" (func $get-arguments (param i32)))
    (import "host" "get-environment" (func $get-environment (param i32)))
    (import "host" "get-directories" (func $get-directories (param i32)))
    (import "host" "exit" (func $exit (param i32)))
    (data (i32.const 64) "\n=")
    (func $print (param $ptr i32) (param $len i32)
      (call $write (call $get-stdout) (local.get $ptr) (local.get $len) (i32.const 0)))
    (func $eprint (param $ptr i32) (param $len i32)
      (call $write (call $get-stderr) (local.get $ptr) (local.get $len) (i32.const 0)))
    (func $newline (call $print (i32.const 64) (i32.const 1)))
    ;; print `count` (ptr, len) strings at `list`, `stride` bytes apart, `offset` into each element
    (func $print_strings (param $list i32) (param $count i32) (param $stride i32) (param $offset i32)
      (local $i i32) (local $p i32)
      (local.set $p (i32.add (local.get $list) (local.get $offset)))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (call $print (i32.load (local.get $p)) (i32.load offset=4 (local.get $p)))
        (call $newline)
        (local.set $p (i32.add (local.get $p) (local.get $stride)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
    BODY)
  (core instance $main-inst (instantiate $main
    (with "env" (instance (export "memory" (memory $memory))))
    (with "host" (instance
      (export "get-stdout" (func $get-stdout)) (export "get-stderr" (func $get-stderr))
      (export "get-stdin" (func $get-stdin)) (export "write" (func $write)) (export "read" (func $read))
      (export "get-arguments" (func $get-arguments)) (export "get-environment" (func $get-environment))
      (export "get-directories" (func $get-directories)) (export "exit" (func $exit))))))
  (func $run (result (result)) (canon lift (core func $main-inst "run")))
  (instance $run-inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-inst))
)
"""

_COMPONENT_BODIES = {
    "c-hello": r"""
    (data (i32.const 100) "hello from a component\n")
    (func (export "run") (result i32) (call $print (i32.const 100) (i32.const 23)) (i32.const 0))""",
    "c-args": r"""
    (func (export "run") (result i32)
      (call $get-arguments (i32.const 0))
      (call $print_strings (i32.load (i32.const 0)) (i32.load (i32.const 4)) (i32.const 8) (i32.const 0))
      (i32.const 0))""",
    "c-env": r"""
    (func (export "run") (result i32) (local $i i32) (local $p i32)
      (call $get-environment (i32.const 0))
      (local.set $p (i32.load (i32.const 0)))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 4))))
        (call $print (i32.load (local.get $p)) (i32.load offset=4 (local.get $p)))
        (call $print (i32.const 65) (i32.const 1))
        (call $print (i32.load offset=8 (local.get $p)) (i32.load offset=12 (local.get $p)))
        (call $newline)
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (i32.const 0))""",
    "c-preopens": r"""
    (func (export "run") (result i32)
      (call $get-directories (i32.const 0))
      (call $print_strings (i32.load (i32.const 0)) (i32.load (i32.const 4)) (i32.const 12) (i32.const 4))
      (i32.const 0))""",
    "c-cat": r"""
    (func (export "run") (result i32) (local $in i32)
      (local.set $in (call $get-stdin))
      (block $eof (loop $next
        (call $read (local.get $in) (i64.const 4096) (i32.const 16))
        (br_if $eof (i32.load8_u (i32.const 16)))
        (call $print (i32.load (i32.const 20)) (i32.load (i32.const 24)))
        (br $next)))
      (i32.const 0))""",
    "c-stderr": r"""
    (data (i32.const 100) "component stderr\n")
    (func (export "run") (result i32) (call $eprint (i32.const 100) (i32.const 17)) (i32.const 0))""",
    "c-fail": r"""(func (export "run") (result i32) (i32.const 1))""",
    "c-exit-err": r"""(func (export "run") (result i32) (call $exit (i32.const 1)) unreachable)""",
    "c-exit-ok": r"""(func (export "run") (result i32) (call $exit (i32.const 0)) unreachable)""",
    "c-trap": r"""(func (export "run") (result i32) unreachable)""",
    "c-loop": r"""(func (export "run") (result i32) (loop $forever (br $forever)) (i32.const 0))""",
}

_NOT_A_COMMAND = """
(component
  (core module $m (func (export "f") (result i32) i32.const 7))
  (core instance $i (instantiate $m))
  (func (export "f") (result u32) (canon lift (core func $i "f"))))
"""


def _wat() -> dict[str, str]:
    programs = {name: _P1_HEAD + body + "\n)" for name, body in _P1_BODIES.items()}
    programs.update(_PLAIN)
    programs.update({name: _COMPONENT.replace("BODY", body) for name, body in _COMPONENT_BODIES.items()})
    programs["c-not-a-command"] = _NOT_A_COMMAND
    return programs


PROGRAMS: dict[str, str] = _wat()


@functools.cache
def wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm(PROGRAMS[name]))
