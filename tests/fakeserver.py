"""A tiny fake OpenAI-compatible HTTP server, used only to inject faults in tests.

It answers `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` on
loopback, from a thread of the test process (or as its own process: `python
tests/fakeserver.py --port N --model ID`, which the local-server tests start as "our"
server). What it does with a request is decided, in this order, by

1. a *rule*: the first `(substring, action)` of `rules` whose substring occurs in the
   request's prompt or messages (deterministic under concurrency); a rule added with
   `times=n` applies to its first `n` matching requests only, then falls through, or
2. the *script*: the next action queued with `push(...)`, or
3. the default: a valid reply whose text echoes the prompt (`"echo: <prompt>"`).

An action is a dict:

- `{"status": 429, "headers": {"Retry-After": "1"}, "json": {...}}`: that status, headers
  and JSON body (`"body": b"..."` sends raw bytes instead);
- `{"sleep": 2.0}`: wait, then do the rest of the action (default: the default reply);
- `{"close": True}`: drop the connection without an answer (orderly close);
- `{"reset": True}`: reset the connection (TCP RST) without an answer;
- `{"truncate": True}`: announce the full reply's length, send half of it, close;
- `{"echo_auth": True}` with a `status`: the error message quotes the request's
  Authorization header as is, as a Python repr, URL-encoded and JSON-escaped (as careless
  providers and proxies do); `{"body_echo_auth": True}`: a 200 whose body is not JSON but
  quotes the header the same ways;
- `{"text": "..."}` / `{"content": None}` / `{"choices": []}` / `{"logprobs": {...}}` /
  `{"usage": None}`: a valid-looking reply with that text, message content, choices,
  logprobs or usage (`None`: no usage reported).

Every request is recorded in `requests` (method, path, headers, JSON body, time).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def _prompt_of(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content") or "") for m in body.get("messages") or [])


def reply(path: str, body: dict[str, Any], action: dict[str, Any] | None = None) -> dict:
    """A valid OpenAI-shaped reply for `path`, modified by `action`."""
    action = action or {}
    text = action.get("text", f"echo: {_prompt_of(body)}")
    if "/chat/" in path:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": action.get("content", text)}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop",
                                  "logprobs": action.get("logprobs")}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop",
                  "logprobs": action.get("logprobs")}
        obj = "text_completion"
    out = {
        "id": "fake-1", "object": obj, "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": action.get("choices", [choice]),
        "usage": action.get("usage", dict(_USAGE)),
    }
    if out["usage"] is None:
        del out["usage"]
    return out


def _echo(auth: str) -> str:
    """The Authorization header as careless servers quote it."""
    return f"{auth} | {auth!r} | {quote(auth)} | {json.dumps(auth)}"


class FakeOpenAI:
    """Start with `with FakeOpenAI() as fake:`; `fake.base_url` is the API root.

    `models`: the ids `GET /v1/models` lists; `port`: 0 for a free one.
    """

    def __init__(self, models: tuple[str, ...] = ("fake",), port: int = 0) -> None:
        self.models = list(models)
        self.port = port
        self.script: deque[dict[str, Any]] = deque()
        self.rules: list[list[Any]] = []  # [substring, action, remaining uses or None]
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------

    def push(self, *actions: dict[str, Any]) -> None:
        with self._lock:
            self.script.extend(actions)

    def rule(self, substring: str, action: dict[str, Any], times: int | None = None) -> None:
        with self._lock:
            self.rules.append([substring, action, times])

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def prompts(self) -> list[str]:
        """The prompt (or joined messages) of every POST, in arrival order."""
        return [_prompt_of(r["body"]) for r in self.posts()]

    def _next_action(self, body: dict[str, Any]) -> dict[str, Any] | None:
        prompt = _prompt_of(body)
        with self._lock:
            for rule in self.rules:
                sub, action, remaining = rule
                if sub in prompt and remaining != 0:
                    if remaining is not None:
                        rule[2] = remaining - 1
                    return action
            return self.script.popleft() if self.script else None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str],
                      cut: int | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type",
                                                                 "application/json"))
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload if cut is None else payload[:cut])
                    if cut is not None:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                fake.requests.append({"method": "GET", "path": self.path, "t": time.monotonic(),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": m, "object": "model"} for m in fake.models]}).encode(), {})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with fake._lock:
                    fake.requests.append({
                        "method": "POST", "path": self.path, "body": body, "t": time.monotonic(),
                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._handle(body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _handle(self, body: dict[str, Any]) -> None:
                action = fake._next_action(body) or {}
                if "sleep" in action:
                    time.sleep(action["sleep"])
                if action.get("close") or action.get("reset"):
                    self.close_connection = True
                    try:
                        if action.get("reset"):  # SO_LINGER 0: close sends RST
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
                            self.connection.close()
                        else:
                            self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                auth = self.headers.get("Authorization", "")
                if "status" in action:
                    payload = action.get("body")
                    if payload is None:
                        message = f"fake error {action['status']}"
                        if action.get("echo_auth"):
                            message += f": invalid credentials {_echo(auth)}"
                        payload = json.dumps(action.get("json", {"error": {
                            "message": message, "type": "server_error"}})).encode()
                    self._send(action["status"], payload, dict(action.get("headers", {})))
                    return
                if action.get("body_echo_auth"):
                    self._send(200, f"<html>proxy error for {_echo(auth)}</html>".encode(),
                               {"Content-Type": "text/html"})
                    return
                if "body" in action:
                    self._send(200, action["body"], dict(action.get("headers", {})))
                    return
                payload = json.dumps(reply(self.path, body, action)).encode()
                self._send(200, payload, {},
                           cut=len(payload) // 2 if action.get("truncate") else None)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def main() -> None:
    """Serve on `--port` (loopback) until killed, listing `--model` (any extra args ignored)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", action="append", default=[])
    args, _ = ap.parse_known_args()
    with FakeOpenAI(models=tuple(args.model or ["fake"]), port=args.port):
        print(f"fake server on 127.0.0.1:{args.port}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()


def process_gone(pid: int) -> bool:
    """Whether a process has exited (a zombie, exited but not yet reaped, counts as gone)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
