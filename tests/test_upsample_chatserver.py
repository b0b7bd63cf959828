"""A local HTTP server speaking OpenAI chat completions, and the endpoint backend's behaviour against it
(through the real ``openai`` client): success, the conversation sent, retries on 429/5xx, timeouts and garbage
recorded per prompt without ending the batch."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")


def completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ChatServer:
    """``handler(request_json) -> (status, body_bytes_or_obj, delay_s)``; every request body is recorded."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[dict] = []
        server = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, out, delay = server.handler(body)
                if delay:
                    time.sleep(delay)
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def last_user_text(body: dict) -> str:
    c = body["messages"][-1]["content"]
    return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text")


DESC = ("a pale figure with long white hair stands in the center of a dark forest, holding a sword high above his "
        "head. the blade glows with a {} light, casting a soft glow on the trees and bushes surrounding him.")


def test_endpoint_two_turn_conversation_sends_history():
    from recaption.upsample import Conversation, Upsampler, load_backend

    def handler(body):
        return 200, completion(DESC.format("red" if "make the light red" in last_user_text(body) else "blue")), 0

    with ChatServer(handler) as srv:
        conv = Conversation(Upsampler(load_backend(srv.url, model="fake-gpt", retries=0)))
        r1 = conv.ask("a man holding a sword")
        r2 = conv.ask("make the light red")
        conv.new("draw a frog playing dominoes")
    assert "blue light" in r1.upsampled and "red light" in r2.upsampled and r1.error is None
    assert srv.requests[0]["model"] == "fake-gpt"
    first, second, third = (b["messages"] for b in srv.requests)
    assert first[0]["role"] == "system" and "team of bots that creates images" in first[0]["content"]
    # the follow-up carries the first turn: its request and the description the backend returned
    assert len(second) == len(first) + 2
    assert 'user input : "a man holding a sword"' in second[-3]["content"]
    assert second[-2] == {"role": "assistant", "content": r1.upsampled}
    assert 'user input : "make the light red"' in second[-1]["content"]
    # a new request starts afresh: same length as the very first chat
    assert len(third) == len(first) and "frog" in third[-1]["content"]


def test_endpoint_retries_429_and_5xx_then_succeeds():
    from recaption.upsample import Upsampler, load_backend

    codes = iter([429, 503, 200])

    def handler(body):
        c = next(codes)
        return (c, completion(DESC.format("green")), 0) if c == 200 else (c, {"error": {"message": "busy"}}, 0)

    waits = []
    with ChatServer(handler) as srv:
        up = Upsampler(load_backend(srv.url, retries=3, backoff_s=0.5, sleep=waits.append))
        r = up.upsample("a man holding a sword")
    assert r.error is None and "green light" in r.upsampled
    assert len(srv.requests) == 3 and waits == [0.5, 1.0]  # exponential backoff


def test_endpoint_batch_records_garbage_timeout_and_http_errors(tmp_path):
    from recaption.upsample import Upsampler, load_backend, upsample_file

    def handler(body):
        p = last_user_text(body)
        if "garbage" in p:
            return 200, b"<html>not json at all</html>", 0
        if "nochoices" in p:
            return 200, {"unexpected": True}, 0
        if "slow" in p:
            return 200, completion(DESC.format("late")), 1.5
        if "forbidden" in p:
            return 403, {"error": {"message": "nope"}}, 0
        return 200, completion(DESC.format("fine")), 0

    prompts = tmp_path / "p.txt"
    prompts.write_text("ok one\ngarbage two\nnochoices three\nslow four\nforbidden five\nok six\n")
    out = tmp_path / "o.jsonl"
    with ChatServer(handler) as srv:
        up = Upsampler(load_backend(srv.url, retries=1, timeout_s=0.3, backoff_s=0.01))
        summary = upsample_file(up, prompts, out, progress=False)
        n_requests = len(srv.requests)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["ok one", "garbage two", "nochoices three", "slow four",
                                           "forbidden five", "ok six"]
    assert set(rows[0]) >= {"prompt", "upsampled", "backend", "words", "error"}
    by = {r["prompt"].split()[0]: r for r in rows}
    assert by["ok"]["error"] is None and 15 <= by["ok"]["words"] <= 80
    assert rows[-1]["error"] is None  # the batch went on after the failures
    for bad in ("garbage", "nochoices", "slow", "forbidden"):
        assert by[bad]["error"] and by[bad]["upsampled"] == "" and srv.url in by[bad]["error"], by[bad]
    assert "Timeout" in by["slow"]["error"] and "after 2 attempts" in by["slow"]["error"]
    assert "403" in by["forbidden"]["error"] or "PermissionDenied" in by["forbidden"]["error"]
    assert summary["ok"] == 2 and summary["errors"] == 4
    assert n_requests == 1 + 1 + 1 + 2 + 1 + 1  # only the timeout was retried
