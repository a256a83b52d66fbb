"""The local strong model: one job, running a llama.cpp server process safely.

[`LocalServer`] starts `python -m llama_cpp.server` on an offline GGUF model as a context
manager and guarantees that the process is gone afterwards (end of the block, exception,
Ctrl-C, interpreter exit, SIGTERM; on Linux also any death of the process that started
it, SIGKILL included, whatever thread called `start`). Build it from a profile with
[`LocalServer.from_spec`]; talk to it with [`cowest.client.StrongClient`], whose
`from_spec` adds this server's [`request_defaults`](LocalServer.request_defaults) to every
request of a local backend.

It is ready only when it is *ours*: the process we started is alive, `GET /v1/models`
lists our alias, and (on Linux) the socket listening on the port belongs to our process.
Another OpenAI-compatible server already listening on a chosen port is never taken for
ours: [`start`](LocalServer.start) refuses a port in use, and picks a free one by default.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from cowest import assets

if TYPE_CHECKING:
    from cowest.config import StrongSpec

__all__ = ["LLAMA_CPP_PLAIN_SAMPLING", "LocalServer", "LocalServerError"]

#: The request fields a llama.cpp server needs for plain sampling: llama-cpp-python applies
#: `repeat_penalty=1.1` by default, so without this a temperature-0 answer would not be
#: plain greedy decoding. (With temperature > 0 the server's `top_k=40` and `min_p=0.05`
#: still apply.) Exposed as [`LocalServer.request_defaults`].
LLAMA_CPP_PLAIN_SAMPLING: Mapping[str, Any] = MappingProxyType({"repeat_penalty": 1.0})


class LocalServerError(RuntimeError):
    """The local llama.cpp server did not start or died; the message holds its log tail."""


_LIVE: "set[LocalServer]" = set()
_LIVE_LOCK = threading.Lock()
_SIGTERM_INSTALLED = False


def _stop_all_servers() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        s.stop()


atexit.register(_stop_all_servers)


def _install_sigterm_handler() -> None:
    """On SIGTERM stop every live server, then behave as the previous handler would.

    CPython lets only the main thread install a signal handler: from another thread this
    does nothing, and a server started there dies with the process through the kernel's
    parent-death signal instead (see [`_spawn`]).
    """
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        _stop_all_servers()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # default action: die by the same signal
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    _SIGTERM_INSTALLED = True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    """Whether something listens on `port` of 127.0.0.1 (a TIME_WAIT leftover does not count:
    SO_REUSEADDR, as uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


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
    """Linux: SIGTERM this child when the thread that forked it ends (see [`_spawn`])."""
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


def _spawn(cmd: list[str], **popen_kwargs: Any) -> "subprocess.Popen[bytes]":
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


def _listening_inodes(port: int) -> set[str] | None:
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


def _socket_inodes(pid: int) -> set[str]:
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


class LocalServer:
    """A llama-cpp-python OpenAI-compatible server on a GGUF file, as a context manager.

    ```python
    with LocalServer.from_spec(spec, logits_all=False, log_path=run_dir / "server.log") as srv:
        client = StrongClient.from_spec(spec, base_url=srv.base_url, cache=..., ledger=...)
    ```

    The constructor has no defaults for what a [`StrongSpec`](cowest.config.StrongSpec)
    sets (`n_threads`, `n_ctx`): those defaults live in the spec only. `logits_all` has no
    default anywhere: each caller decides whether it needs log-probabilities.

    Args:
        gguf: the model file.
        alias: the model name the server answers to (use it as `StrongClient.model`).
        n_threads: llama.cpp threads for generation and prompt processing. llama.cpp
            spin-waits its threads: with as many threads as cores it slows to a crawl when
            any other process computes at the same time (e.g. the weak model); 1 thread
            is then much faster.
        n_ctx: context length (prompt + answer).
        n_batch: prompt-processing batch size.
        chat_format: llama.cpp chat format (`"chatml"`, `"gemma"`, ...); `None` uses the
            GGUF's own template.
        port: default: a free port. A port already in use is refused (never adopted).
        log_path: where the server's stdout/stderr go (default: a new temporary file, kept
            for inspection). uvicorn's access log there lists every request.
        startup_timeout_s: how long to wait for our process to answer `GET /v1/models`
            with our alias.
        logits_all: keep the logits of every position (no default). Needed for any
            log-probabilities (`logprobs=True`: FLARE, and the strong-alone pass that
            serves FLARE); without it such requests fail with HTTP 500. Measured cost on
            Qwen2.5-Coder-1.5B: about 5% more server CPU time per call.
        extra_args: more `llama_cpp.server` arguments, e.g. `["--cache", "True"]` to keep
            prompt states in RAM across non-consecutive requests.
        sha256: the model file's sha256 if known (`from_spec` gives the asset's pinned
            one); else computed from the file the first time [`identity`] is read.

    The server keeps the KV cache of the previous request and reuses its longest common
    prefix, so consecutive requests that share a prefix (same instructions, few-shot
    examples) skip that part of prompt processing. Measured on Qwen2.5-Coder-1.5B (2
    cores): a 235-token prompt took 4.0 s to process cold and 1.5 s when its first ~170
    tokens matched the previous request (2 threads, idle machine; 6.0 s vs 2.1 s with 1
    thread). Only the previous request counts: keep prompts of one template together
    ([`StrongClient.complete_many`] does), or add `--cache True` via `extra_args`. The
    process runs in its own process group and is stopped on exit from the block (also on
    an exception or Ctrl-C), at interpreter exit and on SIGTERM; on Linux it also dies with
    the process that started it (whatever the cause and whichever thread started it).
    """

    #: Fields every request to this server should carry (llama.cpp plain sampling, see
    #: [`LLAMA_CPP_PLAIN_SAMPLING`]). The server owns them because they are llama.cpp's:
    #: [`StrongClient.from_spec`](cowest.client.StrongClient.from_spec) sends them, updated
    #: with the spec's `extra_body`, for every backend-`"local"` client. Read-only.
    request_defaults: ClassVar[Mapping[str, Any]] = LLAMA_CPP_PLAIN_SAMPLING

    def __init__(
        self,
        gguf: Path | str,
        *,
        alias: str,
        n_threads: int,
        n_ctx: int,
        logits_all: bool,
        n_batch: int = 512,
        chat_format: str | None = None,
        port: int | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        extra_args: Sequence[str] = (),
        sha256: str | None = None,
    ) -> None:
        self.gguf = Path(gguf)
        self.alias = alias
        self.n_threads, self.n_ctx, self.n_batch = n_threads, n_ctx, n_batch
        self.chat_format = chat_format
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.logits_all = logits_all
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._sha256 = sha256

    @classmethod
    def from_spec(cls, spec: StrongSpec, *, logits_all: bool, log_path: Path) -> "LocalServer":
        """The server of a backend-`"local"` profile entry (not started).

        Model file `assets.gguf_path(spec.model)` (joined and verified on first use),
        alias `spec.model` (the name [`StrongClient.from_spec`] sends), `spec.n_threads`,
        `spec.n_ctx`, and the asset's llama.cpp `chat_format`.
        """
        if spec.backend != "local":
            raise ValueError(f"strong model {spec.name!r}: backend {spec.backend!r} starts no "
                             "local server (only backend 'local' does)")
        asset = assets.get_asset(spec.model)
        return cls(
            assets.gguf_path(spec.model), alias=spec.model, n_threads=spec.n_threads,
            n_ctx=spec.n_ctx, logits_all=logits_all, chat_format=asset.chat_format,
            log_path=log_path, sha256=asset.sha256,
        )

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "stopped"
        return f"LocalServer({self.gguf.name!r}, alias={self.alias!r}, {self.base_url}, {state})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def identity(self) -> str:
        """`"local:<sha256 of the GGUF>"`: what answers, for the cache key (not the port)."""
        if self._sha256 is None:
            self._sha256 = assets.sha256_file(self.gguf)
        return f"local:{self._sha256}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--model_alias", self.alias,
            "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
            "--n_ctx", str(self.n_ctx), "--n_batch", str(self.n_batch),
            "--verbose", "False",
        ]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        cmd += ["--logits_all", str(bool(self.logits_all))]
        return cmd + self.extra_args

    def log_tail(self, n_chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-n_chars:]
        return data.decode("utf-8", "replace")

    def start(self) -> "LocalServer":
        """Start the server and wait until it answers; raises [`LocalServerError`]."""
        if self.running:
            return self
        if not self.gguf.exists():
            raise LocalServerError(f"model file not found: {self.gguf}")
        if self.port is None:
            self.port = _free_port()
        elif _port_in_use(self.port):
            raise LocalServerError(
                f"cannot start the llama.cpp server for {self.gguf.name} on port {self.port}: "
                f"the port is already in use on 127.0.0.1 (another server?). A LocalServer "
                "never adopts a server it did not start. Leave the port unset (a free one "
                "is chosen) or stop what listens there.")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"llama-server-{self.alias}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _install_sigterm_handler()
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = _spawn(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _models_listed(self, url: str) -> list[str] | None:
        """The model ids `GET url` lists, or None when nothing usable answered."""
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status != 200:
                    return None
                data = json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return None
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return []
        return [str(m.get("id")) for m in items if isinstance(m, dict)]

    def _listener_is_ours(self) -> bool:
        """Whether the socket listening on our port is open in our process (Linux `/proc`;
        True where it cannot be checked)."""
        if self.proc is None or self.port is None:
            return False
        listening = _listening_inodes(self.port)
        if listening is None:  # no /proc: the alias and the live process must do
            return True
        return bool(listening & _socket_inodes(self.proc.pid))

    def _wait_ready(self, t0: float) -> None:
        """Wait until our process serves our alias on our port; raise if it dies or a
        foreign server answers there."""
        url = f"{self.base_url}/models"
        seen = "nothing"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc is not None else None
                raise LocalServerError(
                    f"the llama.cpp server for {self.gguf.name} exited with code "
                    f"{code} while starting. Command: {' '.join(self.command())}"
                    f"\nLog ({self.log_path}), last lines:\n{self.log_tail()}")
            listed = self._models_listed(url)
            if listed is not None:
                if self.alias not in listed:
                    seen = f"a server listing models {listed} (not our alias {self.alias!r})"
                elif self._listener_is_ours():
                    return
                else:
                    seen = (f"a server listing {self.alias!r} whose listening socket is not "
                            f"open in our process (pid {self.proc.pid}): another server")
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise LocalServerError(
                    f"the llama.cpp server for {self.gguf.name} (alias {self.alias!r}) did not "
                    f"become ready within {self.startup_timeout_s:g} s: GET {url} found "
                    f"{seen}. Is llama-cpp-python[server] installed, and is the machine "
                    f"overloaded?\nLog ({self.log_path}), last lines:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after `grace_s`)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # its own group: pgid == pid
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
