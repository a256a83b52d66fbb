"""Child processes that never outlive this one: one job, the lifetime of a server process.

[`spawn`] starts a command so that, on Linux, the kernel stops it when this process ends by
any cause (exit, SIGTERM without a Python handler, SIGKILL), whichever thread asked.
[`track`]ed objects are stopped at interpreter exit and on SIGTERM (once
[`install_sigterm_handler`] ran, from the main thread). [`listening_inodes`] and
[`socket_inodes`] tell whether the socket listening on a port is open in a given process
(Linux `/proc`). [`cowest.server.LocalServer`] uses them all.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, Protocol

__all__ = ["install_sigterm_handler", "listening_inodes", "socket_inodes", "spawn", "track",
           "untrack"]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_LIVE: "set[_Stoppable]" = set()
_LIVE_LOCK = threading.Lock()
_SIGTERM_INSTALLED = False


def track(obj: _Stoppable) -> None:
    """Stop `obj` (call its `stop()`) at interpreter exit and on SIGTERM."""
    with _LIVE_LOCK:
        _LIVE.add(obj)


def untrack(obj: _Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(obj)


def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for obj in live:
        obj.stop()


atexit.register(_stop_all)


def install_sigterm_handler() -> None:
    """On SIGTERM stop every tracked object, then behave as the previous handler would.

    CPython lets only the main thread install a signal handler: from another thread this
    does nothing, and a server started there dies with the process through the kernel's
    parent-death signal instead (see [`spawn`]).
    """
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        _stop_all()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # default action: die by the same signal
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    _SIGTERM_INSTALLED = True


def _load_prctl() -> Any:
    """libc's `prctl`, resolved once in the parent (nothing is loaded between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:  # runs in the child between fork and exec
    """Linux: SIGTERM this child when the thread that forked it ends (see [`spawn`])."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
            os._exit(1)


class _Spawner:
    """One daemon thread that runs the functions given to it, for the life of the process.

    A daemon thread: it is not joined when the main thread ends (non-daemon threads may
    still use the servers), and it ends only when the process does.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._queue: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="cowest-server-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, fut = self._queue.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # handed to the caller
                    fut.set_exception(e)

    def submit(self, fn: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._queue.put((fn, fut))
        return fut


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def spawn(cmd: list[str], **popen_kwargs: Any) -> "subprocess.Popen[bytes]":
    """`Popen(cmd)` from a thread that lives as long as this process.

    Linux's parent-death signal (`PR_SET_PDEATHSIG`) is sent when the *thread* that forked
    the child ends, not the process. A server forked by the main thread, or by one
    long-lived spawner thread when `start` is called from any other thread (a worker of a
    pool, which may end at any time), is thus stopped exactly when this process ends, by
    any cause: exit, SIGTERM without a Python handler, SIGKILL.
    """
    popen = functools.partial(subprocess.Popen, cmd,
                              preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                              **popen_kwargs)
    if threading.current_thread() is threading.main_thread():
        return popen()
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER.pid != os.getpid():  # (a forked child has no thread)
            _SPAWNER = _Spawner()
        spawner = _SPAWNER
    return spawner.submit(popen).result()


def listening_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on `port` (Linux `/proc/net`; None elsewhere)."""
    found: set[str] = set()
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.add(cols[9])
    return found if seen_any else None


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets open in process `pid` and its children (Linux `/proc`)."""
    pids, inodes = [pid], set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes
