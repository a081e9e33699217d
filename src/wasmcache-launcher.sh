#!/bin/sh
# `wasmcache`, the command (installed as bin/wasmcache; the Python CLI is bin/wasmcache-cli beside it).
#
# `wasmcache exec CMD ...` is served here without starting Python: a Python start costs ~11 ms on
# every wrapped command, this path ~1 ms (issue 14, item 7; `make bench` figure "guest"). Hand-written
# shell because that measured cost forces it, and kept to the plain case: the environment that
# `exec` gives CMD is the one wasmcache/_dropin_exec.py builds (the rules' home; this mirrors them, and
# tests/test_launcher.py runs both on the same cases and compares what CMD sees), from a plan that
# the Python CLI writes beside this file (.wasmcache-exec: the hook zip, the platform, the zip's
# sources). Everything else goes to the Python CLI: other commands, `--help`, an option this does not
# know, no plan or a stale one, a root spelled with `~user`, `.` or `..`, a CMD that is not an
# executable file found as os.execvpe finds it (its errors are Python's to report), SIGPIPE or SIGXFSZ
# ignored by the caller (a shell cannot restore them for CMD), or a system without /proc.
#
# One difference, documented: like any POSIX shell, this one sets $PWD for CMD when the caller's
# environment lacks it or holds a stale one.

self=$0
if [ -L "$self" ]; then  # a link from another bin directory (pipx, uv tool): the plan is beside the file
    self=$(readlink -f -- "$self") || self=$0
fi
here=${self%/*}
[ "$here" != "$self" ] || here=.

python_cli() {
    exec "$here/wasmcache-cli" "$@"
}

# [-v|--verbose|--debug|--cache-dir DIR|--cache-dir=DIR]... exec [the same, again]... [--] CMD ARGS...
# (`wasmcache.cli._leading_options` and `_dropin_exec.parse_exec_args`).
n=0 at=lead verbosity=0 lead_dir= exec_dir= value=
for word do
    n=$((n + 1))
    if [ -n "$value" ]; then
        [ -n "$word" ] || python_cli "$@"
        if [ "$at" = lead ]; then lead_dir=$word; else exec_dir=$word; fi
        value=
        continue
    fi
    case $at:$word in
        *:-v | *:--verbose) [ "$verbosity" -ge 1 ] || verbosity=1 ;;
        *:--debug) verbosity=2 ;;
        *:--cache-dir) value=1 ;;
        lead:--cache-dir=?*) lead_dir=${word#--cache-dir=} ;;
        exec:--cache-dir=?*) exec_dir=${word#--cache-dir=} ;;
        lead:exec) at=exec ;;
        exec:--) at=cmd; break ;;
        exec:-*) python_cli "$@" ;;
        exec:*) n=$((n - 1)); at=cmd; break ;;
        *) python_cli "$@" ;;
    esac
done
[ "$at" = cmd ] && [ -z "$value" ] || python_cli "$@"

plan=$here/.wasmcache-exec
[ -f "$plan" ] && [ -r "$plan" ] && [ -r /proc/$$/stat ] || python_cli "$@"
{ IFS= read -r hook && IFS= read -r platform && IFS= read -r source1 && IFS= read -r source2 &&
    IFS= read -r source3; } < "$plan" || python_cli "$@"
# The zip the Python CLI made, newer than each source it was made from (an upgrade makes it stale).
[ "$hook" -nt "$source1" ] && [ "$hook" -nt "$source2" ] && [ "$hook" -nt "$source3" ] || python_cli "$@"

# Python resets SIGPIPE and SIGXFSZ for CMD; a shell cannot, if the caller left them ignored. The mask of
# ignored signals is field 33 of /proc/PID/stat (one short line: dash reads byte by byte), after "(comm) ".
ignored_mask() {
    shift 30
    mask=${1:-1}
}
IFS= read -r stat < /proc/$$/stat || python_cli "$@"
ignored_mask ${stat##*) }
[ "$((mask & 0x1001000))" = 0 ] || python_cli "$@"  # bits of SIGPIPE (13) and SIGXFSZ (25)

# The root: --cache-dir, else $WASMCACHE_DIR, made absolute (os.path.abspath(os.path.expanduser(...)));
# else, on Linux, the XDG rule (`_wasmcache_hook.xdg_cache_root`).
root=${exec_dir:-${lead_dir:-${WASMCACHE_DIR-}}}
if [ -n "$root" ]; then
    case $root in
        "~" | "~/"*) [ -n "${HOME-}" ] || python_cli "$@"; root=$HOME${root#"~"} ;;
        "~"*) python_cli "$@" ;;
    esac
    case $root in /*) ;; *) root=$(pwd -P)/$root || python_cli "$@" ;; esac
    case $root in *//* | */./* | */../* | */. | */.. | */) python_cli "$@" ;; esac  # normpath's work
    WASMCACHE_DIR=$root
    export WASMCACHE_DIR
elif [ "$platform" = linux ]; then
    case ${XDG_CACHE_HOME-} in
        /*) base=$XDG_CACHE_HOME ;;
        *) case ${HOME-} in /*[!/] | /) base=${HOME%/}/.cache ;; *) python_cli "$@" ;; esac ;;
    esac
    case $base in */) WASMCACHE_DIR=${base}wasmcache ;; *) WASMCACHE_DIR=$base/wasmcache ;; esac
    export WASMCACHE_DIR
fi

case :${PYTHONPATH-}: in
    *:"$hook":* | *:"${hook%.zip}":*) ;;
    *) PYTHONPATH=$hook${PYTHONPATH:+:$PYTHONPATH}; export PYTHONPATH ;;
esac
WASMCACHE_AUTO=1
export WASMCACHE_AUTO
if [ "$verbosity" -gt 0 ]; then
    WASMCACHE_VERBOSE=$verbosity
    export WASMCACHE_VERBOSE
fi

# CMD as Python's os.execvpe finds it; anything it would refuse is the Python CLI's to report.
eval "command=\${$((n + 1))-}"
case $command in
    "") python_cli "$@" ;;
    */*) target=$command ;;
    *)
        [ -n "${PATH+set}" ] || python_cli "$@"
        target=
        saved_ifs=$IFS
        IFS=:
        set -f
        for directory in $PATH:; do  # the ':' keeps a trailing empty entry (the current directory)
            if [ -f "${directory:-.}/$command" ] && [ -x "${directory:-.}/$command" ]; then
                target=${directory:-.}/$command
                break
            fi
        done
        set +f
        IFS=$saved_ifs
        ;;
esac
[ -n "$target" ] && [ -f "$target" ] && [ -x "$target" ] || python_cli "$@"
# (An executable file without `#!` runs as a shell script here, as from any shell or execvp(3): the
# Python CLI does the same.)
shift "$n"
exec "$@"
