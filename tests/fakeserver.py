"""A tiny fake OpenAI-compatible HTTP server, used only to inject faults in tests.

It answers `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` from
a thread of the test process. What it does with a request is decided, in this order, by

1. a *rule*: the first `(substring, action)` of `rules` whose substring occurs in the
   request's prompt or messages (deterministic under concurrency), or
2. the *script*: the next action queued with `push(...)`, or
3. the default: a valid reply whose text echoes the prompt (`"echo: <prompt>"`).

An action is a dict:

- `{"status": 429, "headers": {"Retry-After": "1"}, "json": {...}}`: that status, headers
  and JSON body (`"body": b"..."` sends raw bytes instead);
- `{"sleep": 2.0}`: wait, then send the default reply (for client timeouts);
- `{"close": True}`: drop the connection without an answer;
- `{"text": "..."}` / `{"content": None}` / `{"choices": []}` / `{"logprobs": {...}}`:
  a valid-looking reply with that text, message content, choices or logprobs.

Every request is recorded in `requests` (path, headers, JSON body, time).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
    return {
        "id": "fake-1", "object": obj, "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": action.get("choices", [choice]),
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


class FakeOpenAI:
    """Start with `with FakeOpenAI() as fake:`; `fake.base_url` is the API root."""

    def __init__(self) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.rules: list[tuple[str, dict[str, Any]]] = []
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

    def rule(self, substring: str, action: dict[str, Any]) -> None:
        self.rules.append((substring, action))

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def _next_action(self, body: dict[str, Any]) -> dict[str, Any] | None:
        prompt = _prompt_of(body)
        for sub, action in self.rules:
            if sub in prompt:
                return action
        with self._lock:
            return self.script.popleft() if self.script else None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type",
                                                                 "application/json"))
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self) -> None:
                fake.requests.append({"method": "GET", "path": self.path, "t": time.monotonic(),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": "fake", "object": "model"}]}).encode(), {})

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
                if action.get("close"):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                if "sleep" in action:
                    time.sleep(action["sleep"])
                if "status" in action:
                    payload = action.get("body")
                    if payload is None:
                        payload = json.dumps(action.get("json", {"error": {
                            "message": f"fake error {action['status']}",
                            "type": "server_error"}})).encode()
                    self._send(action["status"], payload, dict(action.get("headers", {})))
                    return
                if "body" in action:
                    self._send(200, action["body"], dict(action.get("headers", {})))
                    return
                self._send(200, json.dumps(reply(self.path, body, action)).encode(), {})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
