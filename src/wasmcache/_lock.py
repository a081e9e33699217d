"""Cross-process locks: one per key (`<key>.lock`) and one for the collector (`gc.lock`).

flock locks belong to an open file description, so two threads of one process exclude each other
too, and the kernel drops the lock when its holder dies: that is how a dead writer's temp file is
told from a live one's, never by age. Lock files may be unlinked by gc or clear while held; after
locking, `acquire` checks that the path still names its inode and retries if not.

A forked child inherits the descriptors of the locks its parent holds, and with them the locks: the
lock would stay held until the child exits, and a child waiting for that key would wait for itself.
So a child closes its copies at once (`os.register_at_fork`); the parent's locks are untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import TYPE_CHECKING, Final

from ._core import O_CLOEXEC, O_NOFOLLOW, held_weakly

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


_held: dict[int, int] = {}  # fd -> pid of every lock this process holds (a child closes its inherited copies)


def _close_inherited() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    # Weakly: even this module's globals reach wasmtime's classes (typing.Final -> typing's caches -> the
    # annotations wasmtime-py evaluates) and so the drop-in's patches on them, for the whole of Python's exit.
    os.register_at_fork(after_in_child=held_weakly(_close_inherited))


class KeyLock:
    """An exclusive, cross-process lock held with flock on `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path, follow_symlinks=False)
                held = os.fstat(fd)
            except FileNotFoundError:
                os.close(fd)
                continue
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._fd, self._pid = fd, os.getpid()
                _held[fd] = self._pid
                return True
            os.close(fd)  # the file was replaced after we opened it: lock the new one

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now; False if held or it cannot be created."""
        try:
            return self.acquire(blocking=False)
        except OSError:
            return False

    def release(self, *, unlink: bool = False) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._pid != os.getpid():
            return  # taken by the parent before a fork: this process closed its copy then (its number may be reused)
        _held.pop(fd, None)
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def __enter__(self) -> KeyLock:  # noqa: PYI034 - final in practice; Self needs 3.11
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HOLDER_CHECK_S: Final = 1.0  # how often a waiter looks at the process holding the lock


def wait_for_lock(lock: KeyLock, timeout: float | None,
                  on_wait: Callable[[int | None], None] | None = None) -> tuple[bool, int | None]:
    """Take `lock`, waiting up to `timeout` seconds (None: for ever) while whoever holds it runs.

    (True, None) once taken; (False, pid) as soon as its holder is found stopped (SIGSTOP, Ctrl-Z: it
    will not release the lock until someone continues it); (False, None) at the timeout. `on_wait(pid)`
    runs once, when the wait begins (pid None: the holder is not known; this process's own: another thread).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        if lock.acquire(blocking=False):
            return True, None
        pid = holder(lock.path)
        if pid is not None and pid != os.getpid() and stopped(pid):
            return False, pid
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False, None
        if not told:
            told = True
            if on_wait is not None:
                on_wait(pid)
        if lock.acquire(timeout=_HOLDER_CHECK_S if remaining is None else min(_HOLDER_CHECK_S, remaining)):
            return True, None


def holder_name(pid: int | None) -> str:
    """The holder of a lock, in words: another thread of this process, process N, or another process."""
    return "another thread" if pid == os.getpid() else f"process {pid}" if pid is not None else "another process"


def holder(path: Path) -> int | None:
    """The pid of the process holding the flock on `path`, from /proc/locks (Linux); None if unknown."""
    try:
        st = os.stat(path, follow_symlinks=False)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF" (a waiter's line has "->" after the number)
        words = line.split()
        if len(words) >= 6 and words[1] == "FLOCK" and words[-3] == inode and words[-4].isdigit():
            return int(words[-4]) or None
    return None


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, Ctrl-Z, a debugger): it will not release a lock until
    someone continues it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[:1]  # after the command name, which may hold anything
    except OSError:
        return False
    return state in (["T"], ["t"])


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Yield True while holding `path` if it was free, else False (never waits)."""
    lock = KeyLock(path)
    got = lock.try_acquire()
    try:
        yield got
    finally:
        lock.release()
