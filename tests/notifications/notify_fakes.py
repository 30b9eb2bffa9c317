"""Loopback HTTP servers that imitate Discord's webhook API and GitHub's statuses API.

Each server runs ``http.server`` in a thread and answers from a script of
:class:`Reply` objects (the last one repeats), after checking the request the
way the real API does (Discord's message limits, GitHub's token and fields).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devops.skypilot.common.lifecycle import JobContext, Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.notifier import Event, Links


@dataclass(frozen=True)
class Reply:
    status: int = 204
    #: A dict is sent as JSON; bytes are sent as they are (malformed JSON, say).
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Never answer (until the server stops).
    hang: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: time.monotonic() when the request arrived.
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Validator = Callable[[Request], Reply | None]
#: A scripted answer: a fixed reply, or one made from the request (Discord's echoes the message).
Script = Reply | Callable[[Request], Reply]


class LoopbackServer:
    def __init__(self, replies: list[Script], validate: Validator | None = None) -> None:
        self.replies = list(replies) or [Reply()]
        self.validate = validate
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = Request(
                    "POST", self.path, dict(self.headers), self.rfile.read(length), time.monotonic()
                )
                reply = server._next(request)
                if reply.hang:
                    server._stopping.wait()
                    return
                if reply.delay:
                    server._stopping.wait(reply.delay)
                body = reply.body
                data = json.dumps(body).encode() if isinstance(body, dict) else body or b""
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if isinstance(body, dict):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the default writes request paths (with tokens) to stderr."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.validate is not None:
                refused = self.validate(request)
                if refused is not None:
                    return refused
            script = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            return script if isinstance(script, Reply) else script(request)

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --- what the real APIs check -------------------------------------------------------------

DISCORD_LIMITS = {"content": 2000, "title": 256, "description": 4096, "total": 6000}


def query(request: Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.path).query)


def discord_ok(request: Request) -> Reply:
    """Discord's answer to a good webhook call: with ``?wait=true`` the stored message
    (200), without it only ``204 No Content``, which does not say the message was stored."""
    if query(request).get("wait") != ["true"]:
        return Reply(204)
    message = request.json
    thread = query(request).get("thread_id", ["223344556677889900"])[0]
    stored = {
        "id": str(1_200_000_000_000_000_000 + len(request.body)),
        "type": 0,
        "channel_id": thread,
        "webhook_id": "112233445566778899",
        "content": message.get("content", ""),
        "embeds": message.get("embeds", []),
        "author": {"id": "112233445566778899", "username": message.get("username", "")},
    }
    return Reply(200, stored)


def discord_forum_validate(request: Request) -> Reply | None:
    """A forum channel's webhook: every message goes into a thread (a forum post)."""
    if "thread_id" not in query(request):
        message = "Webhooks posted to forum channels must have a thread_name or thread_id"
        return Reply(400, {"code": 220001, "message": message})
    return discord_validate(request)


def discord_validate(request: Request) -> Reply | None:
    """Discord's 400 "Invalid Form Body" for messages over its limits."""

    def invalid(why: str) -> Reply:
        return Reply(400, {"code": 50035, "message": f"Invalid Form Body: {why}"})

    try:
        message = request.json
    except ValueError:
        return Reply(400, {"code": 50109, "message": "The request body contains invalid JSON."})
    if len(message.get("content", "")) > DISCORD_LIMITS["content"]:
        return invalid("content")
    embeds = message.get("embeds", [])
    if len(embeds) > 10:
        return invalid("embeds")
    total = 0
    for embed in embeds:
        if len(embed.get("title", "")) > DISCORD_LIMITS["title"]:
            return invalid("title")
        if len(embed.get("description", "")) > DISCORD_LIMITS["description"]:
            return invalid("description")
        fields = embed.get("fields", [])
        if len(fields) > 25:
            return invalid("fields")
        for item in fields:
            if not item["value"] or len(item["value"]) > 1024 or len(item["name"]) > 256:
                return invalid("field")
        total += len(embed.get("title", "")) + len(embed.get("description", ""))
        total += len(embed.get("footer", {}).get("text", ""))
        total += sum(len(f["name"]) + len(f["value"]) for f in fields)
    if total > DISCORD_LIMITS["total"]:
        return invalid("embed total")
    return None


def github_validator(
    token: str, repo: str = "octo/trainer", moved: Mapping[str, int] | None = None
) -> Validator:
    """GitHub's statuses endpoint: 401 bad token, 404 other repo, 422 bad fields (with
    ``errors[]`` as GitHub sends them). ``moved`` maps an old ``owner/name`` to the
    repository id it was renamed or transferred to: 301 to ``/repositories/<id>/...``."""

    def invalid(field: str, message: str) -> Reply:
        error = {"resource": "Status", "code": "custom", "field": field, "message": message}
        return Reply(422, {"message": "Validation Failed", "errors": [error], "status": "422"})

    def validate(request: Request) -> Reply | None:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return Reply(401, {"message": "Bad credentials", "status": "401"})
        # GitHub Enterprise serves the same API under /api/v3.
        match = re.fullmatch(
            r"(/api/v3)?/repos/([^/]+/[^/]+)/statuses/([0-9a-f]{40})", request.path
        )
        if match and moved and match.group(2) in moved:
            new = f"{match.group(1) or ''}/repositories/{moved[match.group(2)]}/statuses/"
            location = f"http://{request.headers['Host']}{new}{match.group(3)}"
            body = {"message": "Moved Permanently", "url": location}
            return Reply(301, body, {"Location": location})
        renamed = re.fullmatch(r"(/api/v3)?/repositories/(\d+)/statuses/[0-9a-f]{40}", request.path)
        if not (match and match.group(2) == repo) and not (
            renamed and moved and int(renamed.group(2)) in moved.values()
        ):
            return Reply(404, {"message": "Not Found"})
        body = request.json
        if body.get("state") not in {"pending", "success", "failure", "error"}:
            return invalid("state", "state is not included in the list")
        if len(body.get("description", "")) > 140:
            return invalid("description", "description is too long (maximum is 140 characters)")
        if len(body.get("context", "")) > 255:
            return invalid("context", "context is too long (maximum is 255 characters)")
        return None

    return validate


def webhook_url(server: LoopbackServer, token: str) -> str:
    return f"{server.url}/api/webhooks/112233445566778899/{token}"


def job_context(state_dir: Path, *, node_rank: int = 0, attempt: int = 1) -> JobContext:
    return JobContext(
        job_name="train-7b",
        task_id="sky-managed-2026_train-7b_42-0",
        attempt=attempt,
        node_rank=node_rank,
        num_nodes=2,
        state_dir=state_dir,
        started_at="2026-01-01T00:00:00+00:00",
    )


def make_event(**changes: Any) -> Event:
    """A failed-job event; keyword arguments override its fields."""
    values: dict[str, Any] = {
        "job_name": "train-7b",
        "task_id": "sky-managed-2026_train-7b_42-0",
        "phase": Phase.FAILED,
        "reason": TerminationReason.JOB_FAILED,
        "exit_code": 1,
        "detail": "command exited 1",
        "attempt": 2,
        "num_nodes": 2,
        "elapsed": 3723.0,
        "links": Links(log_command="sky jobs logs 42", git_commit="a" * 40),
    }
    values.update(changes)
    return Event(**values)


class RecordedSleep:
    """Stands in for time.sleep in the retry loop: records each wait, then waits it."""

    def __init__(self, really: bool = False) -> None:
        self.really = really
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.really:
            time.sleep(seconds)
