/* bin/wasmcache: `wasmcache exec CMD ...` without starting Python; every other command goes to the
 * Python CLI beside it (bin/.wasmcache-python, which the installer points at the right interpreter).
 *
 * Why C: a Python start costs every wrapped command ~11 ms on the machines we measure, and the goal
 * for `wasmcache exec true` is 5 ms in all (issue 14, item 7; `make bench` figure "guest"). A shell
 * launcher met the time but cannot pass every environment on unchanged (dash drops `foo.bar` and
 * `BASH_FUNC_f%%`, resets IFS, OPTIND and PPID); this passes the environment it was started with, byte
 * for byte, plus the drop-in's variables, as `wasmcache exec` in Python does.
 *
 * The rules are wasmcache/_dropin_exec.py's (their home); this mirrors the plain case of them and
 * tests/test_launcher.py runs both on the same cases and compares what CMD sees, byte for byte. It
 * reads a plan the Python CLI leaves beside it (.wasmcache-exec-plan: the hook zip, the platform, the
 * zip's sources) and hands everything else to the Python CLI: an option it does not know, `--help`, no
 * plan or a stale one (a source newer than the zip, as after an upgrade), a root spelled `~user` or
 * `~` with no $HOME, no $HOME for the default root, an empty CMD, and any CMD that execve refuses (the
 * Python CLI retries it and reports the error in its own words, or runs a script without `#!`).
 *
 * Built by hatch_build.py when the wheel is built; where no C compiler is found, bin/wasmcache is the
 * Python CLI itself and `exec` pays a Python start. Only libc; no allocation that outlives exec. */

#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif
#ifdef __APPLE__
#define st_mtim st_mtimespec
#endif

#define PYTHON_CLI ".wasmcache-python"  /* _dropin_exec.PYTHON_CLI */
#define PLAN ".wasmcache-exec-plan"     /* _dropin_exec.LAUNCHER_PLAN */

extern char **environ;

static char here[PATH_MAX];  /* the directory of this executable's real file */
static char **arguments;     /* argv, reused for the Python CLI */

/* Everything this does not serve: the Python CLI, with the same arguments. */
static void python_cli(void) {
    static char path[PATH_MAX + sizeof PYTHON_CLI + 1];
    if (here[0] == '\0' || snprintf(path, sizeof path, "%s/%s", here, PYTHON_CLI) >= (int)sizeof path) {
        fputs("wasmcache: cannot find the directory it is installed in: reinstall wasmcache\n", stderr);
        _exit(127);
    }
    char *alone[] = {path, NULL};
    if (arguments[0] == NULL) arguments = alone;  /* started with no argv[0] at all (execve can do that) */
    arguments[0] = path;
    execv(path, arguments);
    fprintf(stderr, "wasmcache: cannot start the Python CLI %s: %s (bin/wasmcache runs only beside the "
            "installation's .wasmcache-python: put it elsewhere with a symbolic link, `ln -s`)\n", path,
            strerror(errno));
    _exit(127);
}

static int resolved_directory(const char *file) {
    char real[PATH_MAX];
    char *slash;
    if (realpath(file, real) == NULL || (slash = strrchr(real, '/')) == NULL) return 0;
    *slash = '\0';
    snprintf(here, sizeof here, "%s", real[0] ? real : "/");
    return 1;
}

/* Where this executable's file is (a symlink from another bin directory is followed, as pipx and uv make). */
static void find_here(const char *argv0) {
#if defined(__linux__)
    if (resolved_directory("/proc/self/exe")) return;
#elif defined(__APPLE__)
    char own[PATH_MAX];
    uint32_t size = sizeof own;
    if (_NSGetExecutablePath(own, &size) == 0 && resolved_directory(own)) return;
#endif
    if (strchr(argv0, '/') != NULL) {
        resolved_directory(argv0);
        return;
    }
    const char *path = getenv("PATH");
    while (path != NULL && *path != '\0') {  /* found on PATH as a shell found it */
        const char *end = strchr(path, ':');
        size_t length = end ? (size_t)(end - path) : strlen(path);
        char candidate[PATH_MAX];
        if (snprintf(candidate, sizeof candidate, "%.*s/%s", (int)length, length ? path : ".", argv0) <
                (int)sizeof candidate && access(candidate, X_OK) == 0 && resolved_directory(candidate))
            return;
        path = end ? end + 1 : NULL;
    }
}

/* --- the environment CMD gets: _dropin_exec.exec_environment, on a copy of the caller's ------------- */

static char **env;
static size_t env_length;

/* The end of `text`'s first part before `separator` (strchrnul, which not every libc has). */
static const char *part_end(const char *text, char separator) {
    while (*text != '\0' && *text != separator) text++;
    return text;
}

static size_t name_length(const char *entry) { return (size_t)(part_end(entry, '=') - entry); }

static ssize_t find(const char *name, size_t length) {
    for (size_t i = 0; i < env_length; i++)
        if (name_length(env[i]) == length && memcmp(env[i], name, length) == 0) return (ssize_t)i;
    return -1;
}

static const char *lookup(const char *name) {
    ssize_t i = find(name, strlen(name));
    return i < 0 ? NULL : env[i] + strlen(name) + 1;
}

/* As _dropin_exec.caller_environment reads /proc/self/environ: a name given twice once, with its first
 * value (what getenv(3) and CPython's os.environ see); entries without a name or `=` left out. */
static void copy_environment(void) {
    size_t count = 0;
    while (environ[count] != NULL) count++;
    env = calloc(count + 5, sizeof *env);
    if (env == NULL) python_cli();
    for (size_t i = 0; i < count; i++) {
        const char *entry = environ[i];
        size_t length = name_length(entry);
        if (length == 0 || entry[length] != '=') continue;
        if (find(entry, length) < 0) env[env_length++] = (char *)entry;
    }
}

static void set(const char *name, const char *value) {
    size_t size = strlen(name) + strlen(value) + 2;
    char *entry = malloc(size);
    if (entry == NULL) python_cli();
    snprintf(entry, size, "%s=%s", name, value);
    ssize_t i = find(name, strlen(name));
    if (i >= 0) env[i] = entry;
    else env[env_length++] = entry;
}

/* os.path.normpath (POSIX), in place: `.` and empty components dropped, `..` taken back lexically. */
static void normpath(char *path) {
    size_t slashes = path[0] == '/' ? (path[1] == '/' && path[2] != '/' ? 2 : 1) : 0;
    char *out = path + slashes, *read = path, *start = out;
    size_t kept = 0;  /* components in out, none of them `..` at the front of a relative path */
    while (*read) {
        while (*read == '/') read++;
        char *end = read + (part_end(read, '/') - read);
        size_t length = (size_t)(end - read);
        if (length == 0 || (length == 1 && read[0] == '.')) {
        } else if (length == 2 && read[0] == '.' && read[1] == '.' && (slashes || kept)) {
            if (kept) {  /* drop the last component */
                while (out > start && out[-1] != '/') out--;
                if (out > start) out--;
                kept--;
            }
        } else {
            if (out > start) *out++ = '/';
            memmove(out, read, length);
            out += length;
            if (!(length == 2 && read[0] == '.' && read[1] == '.')) kept++;
        }
        read = end;
    }
    *out = '\0';
    if (path[0] == '\0') strcpy(path, ".");
}

/* _wasmcache_hook.expand_user into `expanded`: 0 for the Python CLI to judge (`~user`, and `~` with no
 * absolute $HOME, which Python looks up in the password database: an empty or relative $HOME is taken as
 * unset, as platformdirs does). $HOME as Python's os.environ has it (the first of two). */
static int expand_user(const char *path, char *expanded, size_t size) {
    if (path[0] != '~') return snprintf(expanded, size, "%s", path) < (int)size;
    const char *rest = part_end(path, '/');
    const char *home = getenv("HOME");
    if (rest != path + 1 || home == NULL || home[0] != '/') return 0;
    size_t length = strlen(home);
    while (length > 0 && home[length - 1] == '/') length--;
    if (snprintf(expanded, size, "%.*s%s", (int)length, home, rest) >= (int)size) return 0;
    if (expanded[0] == '\0') strcpy(expanded, "/");
    return 1;
}

/* os.path.abspath(os.path.expanduser(root)), or NULL for the Python CLI to judge. */
static char *absolute_root(const char *root) {
    static char result[2 * PATH_MAX + 2];
    char expanded[PATH_MAX * 2];
    if (!expand_user(root, expanded, sizeof expanded)) return NULL;
    if (expanded[0] == '/') {
        snprintf(result, sizeof result, "%s", expanded);
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL) return NULL;  /* a deleted directory: Python says so */
        if (snprintf(result, sizeof result, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", expanded) >=
                (int)sizeof result)
            return NULL;
    }
    normpath(result);
    return result;
}

/* _wasmcache_hook.xdg_cache_root on Linux: os.path.join($XDG_CACHE_HOME when absolute, else
 * os.path.expanduser("~/.cache"), "wasmcache"); NULL for the Python CLI to judge. */
static const char *default_root(void) {
    static char root[PATH_MAX * 2 + 16];
    char base[PATH_MAX * 2];
    const char *configured = lookup("XDG_CACHE_HOME");
    if (configured != NULL && configured[0] == '/') snprintf(base, sizeof base, "%s", configured);
    else if (!expand_user("~/.cache", base, sizeof base)) return NULL;
    size_t length = strlen(base);
    snprintf(root, sizeof root, "%s%swasmcache", base, length == 0 || base[length - 1] == '/' ? "" : "/");
    return root;
}

/* --- the plan the Python CLI left: the hook zip and what it was made from --------------------------- */

static char hook[PATH_MAX + 1], platform[64];

static int read_line(FILE *file, char *line, size_t size) {
    if (fgets(line, (int)size, file) == NULL) return 0;
    size_t length = strlen(line);
    if (length == 0 || line[length - 1] != '\n') return 0;
    line[length - 1] = '\0';
    return 1;
}

/* The zip is fresh when it ends with the stamp of the very sources it was made from (their inode, size
 * and modification time: _dropin_exec.hook_stamp, the same bytes), as _dropin_exec.hook_entry checks. */
static int read_plan(void) {
    char path[PATH_MAX + sizeof PLAN + 1], source[PATH_MAX + 1], stamp[256], tail[256];
    struct stat file;
    if (snprintf(path, sizeof path, "%s/%s", here, PLAN) >= (int)sizeof path) return 0;
    FILE *plan = fopen(path, "r");
    if (plan == NULL) return 0;
    int fresh = read_line(plan, hook, sizeof hook) && strlen(hook) > 4 &&
                strcmp(hook + strlen(hook) - 4, ".zip") == 0 && read_line(plan, platform, sizeof platform);
    int length = snprintf(stamp, sizeof stamp, "wasmcache-hook-sources ");
    for (int i = 0; fresh && i < 3; i++) {
        fresh = read_line(plan, source, sizeof source) && stat(source, &file) == 0;
        if (fresh)
            length += snprintf(stamp + length, sizeof stamp - (size_t)length, "%s%llu:%lld:%lld", i ? ";" : "",
                               (unsigned long long)file.st_ino, (long long)file.st_size,
                               (long long)file.st_mtim.tv_sec * 1000000000LL + file.st_mtim.tv_nsec);
        fresh = fresh && length < (int)sizeof stamp;
    }
    fclose(plan);
    if (!fresh) return 0;
    FILE *zip = fopen(hook, "rb");
    if (zip == NULL) return 0;
    fresh = fseek(zip, -(long)length, SEEK_END) == 0 && fread(tail, 1, (size_t)length, zip) == (size_t)length &&
            memcmp(tail, stamp, (size_t)length) == 0 && fgetc(zip) == EOF;
    fclose(zip);
    return fresh;
}

/* PYTHONPATH with the hook first, unless the hook (zip or directory) is already one of its entries. */
static void put_hook_on_pythonpath(void) {
    const char *current = lookup("PYTHONPATH");
    size_t zip_length = strlen(hook), dir_length = zip_length - 4;  /* the directory: the zip's name less .zip */
    if (current != NULL) {
        for (const char *entry = current;;) {
            const char *end = part_end(entry, ':');
            size_t length = (size_t)(end - entry);
            if ((length == zip_length || length == dir_length) && memcmp(entry, hook, length) == 0) return;
            if (*end == '\0') break;
            entry = end + 1;
        }
    }
    size_t size = zip_length + (current ? strlen(current) : 0) + 2;
    char *value = malloc(size);
    if (value == NULL) python_cli();
    snprintf(value, size, "%s%s%s", hook, current && *current ? ":" : "", current && *current ? current : "");
    set("PYTHONPATH", value);
}

/* --- CMD, found as os.execvpe finds it ----------------------------------------------------------------- */

static void become(char **command) {
    const char *file = command[0];
    if (strchr(file, '/') != NULL) {
        execve(file, command, env);
        return;
    }
    const char *path = lookup("PATH");
    if (path == NULL) path = "/bin:/usr/bin";  /* os.defpath */
    for (const char *entry = path;;) {
        const char *end = part_end(entry, ':');
        size_t length = (size_t)(end - entry);
        char full[PATH_MAX * 2];
        /* os.path.join(entry, file): an empty entry is the current directory, a trailing slash kept */
        if (snprintf(full, sizeof full, "%.*s%s%s", (int)length, entry,
                     length == 0 || entry[length - 1] == '/' ? "" : "/", file) < (int)sizeof full)
            execve(full, command, env);
        if (*end == '\0') break;
        entry = end + 1;
    }
}

int main(int argc, char **argv) {
    arguments = argv;
    find_here(argc > 0 && argv[0] ? argv[0] : "wasmcache");
    if (argc < 2) python_cli();

    /* [-v|--verbose|--debug|--cache-dir DIR|--cache-dir=DIR]... exec (cli._leading_options) */
    int i = 1, verbosity = 0;
    const char *cache_dir = NULL;
    while (i < argc) {
        const char *word = argv[i];
        if (strcmp(word, "-v") == 0 || strcmp(word, "--verbose") == 0) {
            if (verbosity < 1) verbosity = 1;
            i++;
        } else if (strcmp(word, "--debug") == 0) {
            verbosity = 2;
            i++;
        } else if (strcmp(word, "--cache-dir") == 0 && i + 1 < argc) {
            cache_dir = argv[i + 1];
            i += 2;
        } else if (strncmp(word, "--cache-dir=", 12) == 0) {
            cache_dir = word + 12;
            i++;
        } else {
            break;
        }
    }
    if (i >= argc || strcmp(argv[i], "exec") != 0 || (cache_dir != NULL && cache_dir[0] == '\0')) python_cli();
    i++;
    /* [--cache-dir DIR|--cache-dir=DIR|-v|--verbose|--debug]... [--] CMD ARGS... (parse_exec_args) */
    while (i < argc && argv[i][0] == '-') {
        const char *word = argv[i];
        if (strcmp(word, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(word, "-v") == 0 || strcmp(word, "--verbose") == 0 || strcmp(word, "--debug") == 0) {
            int asked = word[2] == 'd' ? 2 : 1;
            if (verbosity < asked) verbosity = asked;
            i++;
        } else if (strcmp(word, "--cache-dir") == 0 && i + 1 < argc && argv[i + 1][0] != '\0') {
            cache_dir = argv[i + 1];
            i += 2;
        } else if (strncmp(word, "--cache-dir=", 12) == 0 && word[12] != '\0') {
            cache_dir = word + 12;
            i++;
        } else {
            python_cli();
        }
    }
    if (i >= argc || argv[i][0] == '\0' || !read_plan()) python_cli();

    copy_environment();
    put_hook_on_pythonpath();
    set("WASMCACHE_AUTO", "1");
    /* One root for CMD and everything it starts, pinned here (exec_environment's rule). */
    const char *root = cache_dir;
    if (root == NULL) root = lookup("WASMCACHE_DIR");
    if (root == NULL || root[0] == '\0') {
        root = NULL;
        if (strcmp(platform, "linux") == 0 && (root = default_root()) == NULL) python_cli();
    }
    if (root != NULL) {
        const char *absolute = absolute_root(root);
        if (absolute == NULL) python_cli();
        set("WASMCACHE_DIR", absolute);
    }
    if (verbosity > 0) set("WASMCACHE_VERBOSE", verbosity >= 2 ? "2" : "1");
    env[env_length] = NULL;

    /* Python ignores SIGPIPE and SIGXFSZ for itself and resets both for CMD; so does this. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    become(argv + i);
    python_cli();  /* execve refused CMD: the Python CLI says why in its own words (or runs a script) */
    return 127;
}
