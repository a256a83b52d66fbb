"""Where the strong model answers: one job, routing a client's requests to an endpoint.

An [`Endpoint`] wraps what a [`StrongClient`](cowest.client.StrongClient) is given:

- the base URL of an API (a string): every request goes there, up to the client's
  `concurrency` at once;
- local [`Servers`]: a [`LocalServer`](cowest.server.LocalServer) or a
  [`ServerPool`](cowest.server.ServerPool), started lazily: on the first request that the
  cache could not answer (so a rerun whose calls are all cached starts no server). Each
  request then goes to a server that no other request of this endpoint is using
  (llama-cpp-python answers one request at a time), waiting for one when all are busy.

It also names what answers, for the cache key ([`Endpoint.identity`]): the normalised URL
of an API ([`endpoint_identity`]), or `"local:<sha256 of the GGUF>"` of local servers,
never a port.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Endpoint", "Servers", "endpoint_identity", "pinned_identity"]


class Servers(Protocol):
    """What an endpoint needs of local servers (`LocalServer` and `ServerPool` have it)."""

    @property
    def identity(self) -> str: ...  # `"local:<sha256 of the GGUF>"`, not a port

    @property
    def base_urls(self) -> list[str]: ...  # one per server, known once started

    def start(self) -> Any: ...  # idempotent and thread-safe


def endpoint_identity(base_url: str) -> str:
    """The normalised base URL that identifies an API endpoint in the cache key.

    Lower-case scheme and host, no user name or password, no default port (80 for http,
    443 for https), no query or fragment, no trailing slash:
    `"HTTPS://user:pw@API.openai.com:443/v1/"` -> `"https://api.openai.com/v1"`.
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def pinned_identity(model: str) -> str | None:
    """`"local:<sha256>"` of the offline asset named `model`, if it is one."""
    from cowest.assets import ASSETS

    asset = ASSETS.get(model)
    return f"local:{asset.sha256}" if asset is not None else None


class Endpoint:
    """An API's base URL, or local servers started on first use (see the module doc).

    Args:
        target: the API root (e.g. `"https://api.openai.com/v1"`, or the URL of a server
            that is already running), or [`Servers`] that need not be started.
    """

    def __init__(self, target: str | Servers) -> None:
        self.target = target
        self._urls: list[str] | None = [target] if isinstance(target, str) else None
        self._free: queue.SimpleQueue[str] | None = None  # local servers not in use
        self._lock = threading.Lock()
        self._start_error: BaseException | None = None

    @property
    def local(self) -> bool:
        """Local servers (one request at a time each), not a URL."""
        return not isinstance(self.target, str)

    @property
    def identity(self) -> str:
        """What answers, for the cache key: the normalised URL, or the servers' identity."""
        if isinstance(self.target, str):
            return endpoint_identity(self.target)
        return self.target.identity

    @property
    def base_url(self) -> str | None:
        """The URL, or the first local server's once started (else None)."""
        return self._urls[0] if self._urls else None

    def describe(self) -> str:
        """Where requests go, for messages (no credentials)."""
        if self._urls is None:
            return f"{self.identity} (local, not started yet)"
        return ", ".join(endpoint_identity(u) for u in self._urls)

    def start(self) -> None:
        """Start the local servers, once, whichever thread asks first; a failure to start
        is raised again to every later caller (no URL: nothing to do)."""
        with self._lock:
            if self._start_error is not None:
                raise self._start_error
            if self._urls is not None:
                return
            assert not isinstance(self.target, str)
            try:
                self.target.start()
            except BaseException as e:
                self._start_error = e
                raise
            urls = list(self.target.base_urls)
            self._free = queue.SimpleQueue()
            for url in urls:
                self._free.put(url)
            self._urls = urls

    @contextmanager
    def lease(self) -> Iterator[str]:
        """The base URL for one request: the API's, or a local server that no other request
        is using until the block ends (waits for one; the first lease starts them)."""
        self.start()
        if self._free is None:
            assert self._urls is not None
            yield self._urls[0]
            return
        url = self._free.get()
        try:
            yield url
        finally:
            self._free.put(url)
