"""The OpenAI-compatible captioner against a local HTTP server speaking /v1/chat/completions."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")
from PIL import Image  # noqa: E402

from recaption.captioners import CaptionerError, load_captioner  # noqa: E402
from recaption.captioners.openai_api import OpenAICaptioner  # noqa: E402


class Server:
    """A chat-completions server whose behaviour the test sets: ``fail`` = statuses to send first."""

    def __init__(self) -> None:
        self.fail: list[int] = []
        self.body: dict | str | None = None  # a fixed (possibly malformed) body instead of a good answer
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "tiny-vlm", "object": "model", "created": 0,
                                                              "owned_by": "me"}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(req)
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                    status = outer.fail.pop(0) if outer.fail else 200
                try:
                    threading.Event().wait(0.05)
                    if status != 200:
                        return self._send(status, {"error": {"message": f"status {status}", "type": "x"}})
                    if outer.body is not None:
                        return self._send(200, outer.body)
                    content = req["messages"][0]["content"]
                    url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
                    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                    text = f"{img.getpixel((0, 0))} {content[0]['text'][:5]}"
                    self._send(200, {"id": "1", "object": "chat.completion", "created": 0, "model": req["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}]})
                finally:
                    with outer.lock:
                        outer.active -= 1

            def _send(self, status, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def _images(n):
    return [Image.new("RGB", (16, 16), (i * 20 % 256, 0, 0)) for i in range(n)]


def test_captions_in_order_with_data_urls_and_concurrency_limit(server):
    cap = load_captioner(f"openai:tiny-vlm@{server.url}", max_concurrency=3, backoff=0.01)
    out = cap.caption(_images(9), "descriptive")
    assert out == [f"({i * 20 % 256}, 0, 0) Descr" for i in range(9)]  # one per image, in order
    assert len(server.requests) == 9 and server.requests[0]["model"] == "tiny-vlm"
    url = server.requests[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert 1 < server.max_active <= 3
    assert cap.provenance("short").prompt.startswith("Write a short caption")


def test_url_spec_lists_the_model(server):
    cap = load_captioner(server.url)
    assert cap.model == "tiny-vlm"
    assert load_captioner(server.url + "#other").model == "other"


def test_retries_429_and_5xx_with_backoff(server):
    server.fail = [429, 503, 500]
    cap = OpenAICaptioner("m", base_url=server.url, max_concurrency=1, backoff=0.01, max_retries=5)
    assert cap.caption(_images(1), "short") == ["(0, 0, 0) Write"]
    assert len(server.requests) == 4


def test_gives_up_after_max_retries(server):
    server.fail = [429] * 10
    cap = OpenAICaptioner("m", base_url=server.url, max_concurrency=1, backoff=0.01, max_retries=2)
    with pytest.raises(CaptionerError, match="gave up after 3 tries"):
        cap.caption(_images(1), "short")


def test_client_errors_are_not_retried(server):
    server.fail = [400]
    cap = OpenAICaptioner("m", base_url=server.url, backoff=0.01)
    with pytest.raises(CaptionerError, match="HTTP 400"):
        cap.caption(_images(1), "short")
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", [{"id": "x", "object": "chat.completion"},
                                  {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]},
                                  {"choices": []}, "not json at all"])
def test_malformed_responses_raise_captioner_error(server, body):
    server.body = body
    cap = OpenAICaptioner("m", base_url=server.url, backoff=0.01, max_retries=1)
    with pytest.raises(CaptionerError, match="malformed"):
        cap.caption(_images(1), "descriptive")


def test_timeout_is_retried_then_reported(server):
    cap = OpenAICaptioner("m", base_url=server.url, timeout=0.01, backoff=0.01, max_retries=1)
    with pytest.raises(CaptionerError, match="Timeout"):
        cap.caption(_images(1), "short")
    assert len(server.requests) >= 1
