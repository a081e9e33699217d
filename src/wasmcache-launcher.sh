#!/bin/sh
# `wasmcache-exec CMD ...`: `wasmcache exec CMD ...` without starting Python (installed as bin/wasmcache-exec,
# beside the Python CLI bin/wasmcache).
#
# A Python start costs every wrapped command ~11 ms; this path ~1 ms (issue 14, item 7; `make bench` figure
# "guest"). Hand-written shell because that measured cost forces it, and opt-in because a POSIX shell cannot
# pass every environment on unchanged: it drops variables whose names it cannot hold (`foo.bar`, bash's
# exported functions `BASH_FUNC_f%%`), resets IFS, OPTIND and PPID, and sets or corrects PWD. `wasmcache
# exec` (Python) passes the caller's environment byte for byte; this is for wrapping many short commands.
#
# The environment CMD gets is the one wasmcache/_dropin_exec.py builds (the rules' home; this mirrors them,
# and tests/test_launcher.py runs both on the same cases and compares what CMD sees), from a plan the Python
# CLI writes beside this file (.wasmcache-exec: the hook zip, the platform, the zip's sources). Everything
# else goes to `wasmcache exec`: `--help`, an option this does not know, no plan or a stale one, a root
# spelled with `~user`, `.` or `..`, a relative $HOME, a CMD that is not an executable file found as
# os.execvpe finds it (its errors are Python's to report), SIGPIPE or SIGXFSZ ignored by the caller (a
# shell cannot restore them for CMD), or a system without /proc.

self=$0
if [ -L "$self" ]; then  # a link from another bin directory (pipx, uv tool): the plan is beside the file
    self=$(readlink -f -- "$self") || self=$0
fi
here=${self%/*}
[ "$here" != "$self" ] || here=.

python_cli() {
    exec "$here/wasmcache" exec "$@"
}

# [-v|--verbose|--debug|--cache-dir DIR|--cache-dir=DIR]... [--] CMD ARGS... (`_dropin_exec.parse_exec_args`)
n=0 verbosity=0 exec_dir= value=
for word do
    if [ -n "$value" ]; then
        [ -n "$word" ] || python_cli "$@"
        exec_dir=$word
        value=
        n=$((n + 1))
        continue
    fi
    case $word in
        -v | --verbose) [ "$verbosity" -ge 1 ] || verbosity=1 ;;
        --debug) verbosity=2 ;;
        --cache-dir) value=1 ;;
        --cache-dir=?*) exec_dir=${word#--cache-dir=} ;;
        --) n=$((n + 1)); break ;;
        -*) python_cli "$@" ;;
        *) break ;;
    esac
    n=$((n + 1))
done
[ -z "$value" ] || python_cli "$@"

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
root=${exec_dir:-${WASMCACHE_DIR-}}
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
