"""The local strong model: one job, running llama.cpp server processes safely.

[`LocalServer`] starts `python -m cowest.llama_server` (llama-cpp-python's OpenAI server with
a fast path for log-probabilities, same arguments) on an offline GGUF model as a context
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

[`ServerPool`] is `StrongSpec.servers` identical servers behind one client (llama-cpp-python
answers one request at a time per server). Neither is started by being built: the client
starts it on the first request that its cache cannot answer, so a run whose calls are all
cached starts no server at all. How each process dies with ours is [`cowest.childproc`]'s
job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from cowest import assets, childproc

if TYPE_CHECKING:
    from cowest.config import StrongSpec

__all__ = ["LLAMA_CPP_PLAIN_SAMPLING", "LocalServer", "LocalServerError", "ServerPool"]

#: The request fields a llama.cpp server needs for plain sampling: llama-cpp-python applies
#: `repeat_penalty=1.1` by default, so without this a temperature-0 answer would not be
#: plain greedy decoding. (With temperature > 0 the server's `top_k=40` and `min_p=0.05`
#: still apply.) Exposed as [`LocalServer.request_defaults`].
LLAMA_CPP_PLAIN_SAMPLING: Mapping[str, Any] = MappingProxyType({"repeat_penalty": 1.0})


class LocalServerError(RuntimeError):
    """The local llama.cpp server did not start or died; the message holds its log tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held at once while they are chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


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


class LocalServer:
    """A llama-cpp-python OpenAI-compatible server on a GGUF file, as a context manager.

    ```python
    with LocalServer.from_spec(spec, logits_all=False, log_path=run_dir / "server.log") as srv:
        client = StrongClient.from_spec(spec, endpoint=srv, cache=..., ledger=...)
    ```

    Entering the block starts it; a client given a server that is not started starts it
    on its first request that the cache cannot answer (someone must still `stop()` it:
    the block's end, or `ExitStack.callback(srv.stop)`).

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
    def base_urls(self) -> list[str]:
        """`[base_url]` (as [`ServerPool.base_urls`]: a client takes either)."""
        return [self.base_url]

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
            sys.executable, "-m", "cowest.llama_server",
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
        childproc.install_sigterm_handler()
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = childproc.spawn(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        childproc.track(self)
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
        listening = childproc.listening_inodes(self.port)
        if listening is None:  # no /proc: the alias and the live process must do
            return True
        return bool(listening & childproc.socket_inodes(self.proc.pid))

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
        childproc.untrack(self)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServerPool:
    """Identical llama.cpp servers behind one client, started together on first use.

    llama-cpp-python's server answers one request at a time, so `N` servers of `t` threads
    each answer `N` requests at once. Measured on 2 cores with Qwen2.5-Coder-0.5B: two
    1-thread servers with two client threads did 16 strong calls in 22.8 s, one 2-thread
    server 28.7 s (1.26x; `benchmarks/strong_layout.py`). A
    [`StrongClient`](cowest.client.StrongClient) given a pool starts it on its first
    request that the cache cannot answer and then sends each request to a server that
    no other request of that client is using (its `concurrency` threads share them).

    Every server runs the same file with the same settings, so whichever answers gives the
    same answer: temperature 0 is greedy decoding, and a sampled request carries its own
    seed, which llama-cpp-python sets per request. (Each server reuses the prompt prefix of
    its own previous request, so the batches it evaluates differ from one server's; the
    answers were identical in every comparison made: 20 of 20 Qwen-0.5B refinements, 1 x 2
    threads against 2 x 1 thread, and the SmolLM2 test.) The pool's [`identity`] (the
    cache key's) is that of its file, not of any port.

    Args:
        servers: the servers, not started, all on one GGUF file with one alias and the
            same settings (ports may be set; unset ones get distinct free ports).
    """

    def __init__(self, servers: Sequence[LocalServer]) -> None:
        self.servers = list(servers)
        if not self.servers:
            raise ValueError("a ServerPool needs at least one server")

        def settings(s: LocalServer) -> tuple[Any, ...]:
            return (s.gguf, s.alias, s.n_threads, s.n_ctx, s.n_batch, s.chat_format,
                    s.logits_all, s.extra_args, s._sha256)

        for s in self.servers[1:]:
            if settings(s) != settings(self.servers[0]):
                raise ValueError(f"the servers of a pool must be identical: {s!r} differs "
                                 f"from {self.servers[0]!r}")
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: StrongSpec, *, logits_all: bool, log_path: Path) -> "ServerPool":
        """`spec.servers` servers as [`LocalServer.from_spec`] builds them (not started).

        One server logs to `log_path`; several to `<stem>-1<suffix>`, `<stem>-2<suffix>`...
        """
        log_path = Path(log_path)
        paths = ([log_path] if spec.servers == 1 else
                 [log_path.with_name(f"{log_path.stem}-{i}{log_path.suffix}")
                  for i in range(1, spec.servers + 1)])
        return cls([LocalServer.from_spec(spec, logits_all=logits_all, log_path=p)
                    for p in paths])

    def __repr__(self) -> str:
        return (f"ServerPool({len(self.servers)} x {self.servers[0].gguf.name!r}, "
                f"{self.started} running)")

    @property
    def alias(self) -> str:
        return self.servers[0].alias

    @property
    def identity(self) -> str:
        """`"local:<sha256 of the GGUF>"`, as [`LocalServer.identity`]: not a port."""
        return self.servers[0].identity

    @property
    def size(self) -> int:
        return len(self.servers)

    @property
    def started(self) -> int:
        """How many of its servers are running."""
        return sum(s.running for s in self.servers)

    @property
    def running(self) -> bool:
        return all(s.running for s in self.servers)

    @property
    def base_urls(self) -> list[str]:
        """Where the servers answer (their ports are known once [`start`] chose them)."""
        return [s.base_url for s in self.servers]

    def start(self) -> "ServerPool":
        """Start every server that is not running, at once (threads), and wait for all.

        Safe to call from several threads: one starts, the others wait. If one fails,
        every server is stopped and its [`LocalServerError`] is raised.
        """
        with self._lock:
            todo = [s for s in self.servers if not s.running]
            if not todo:
                return self
            childproc.install_sigterm_handler()  # (from the main thread only)
            unset = [s for s in todo if s.port is None]
            for s, port in zip(unset, _free_ports(len(unset))):
                s.port = port
            errors: list[BaseException] = []

            def start(s: LocalServer) -> None:
                try:
                    s.start()
                except BaseException as e:  # handed to the caller below
                    errors.append(e)

            threads = [threading.Thread(target=start, args=(s,), name="cowest-pool-start")
                       for s in todo[1:]]
            for t in threads:
                t.start()
            start(todo[0])  # in this thread (a main-thread caller forks it directly)
            for t in threads:
                t.join()
            if errors:
                self.stop()
                raise errors[0]
            return self

    def stop(self) -> None:
        """Stop every server (see [`LocalServer.stop`])."""
        for s in self.servers:
            s.stop()

    def __enter__(self) -> "ServerPool":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
