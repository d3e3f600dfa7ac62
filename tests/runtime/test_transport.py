"""Every request gets an answer (issue 13): half-closed clients and malformed HTTP, over raw sockets.

The real transport (``HttpServer`` + the ``App`` error mapping) runs in-process on its own event loop
with an echo route; no model is needed to exercise framing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import orjson
import pytest

from paddle_runtime.app import App
from paddle_runtime.transport import MAX_HEADER_BYTES, HttpServer, Request, Response, json_response

MAX_BODY = 1000


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    # serve runs on uvloop when it is installed; both loops must keep half-closed connections open.
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    app = App()

    async def echo(req: Request) -> Response:
        await asyncio.sleep(0.02)  # like an inference: the client's FIN arrives before the answer is ready
        return json_response({"n": len(req.body)})

    app.add_route("POST", "/echo", echo)
    server = HttpServer(app, MAX_BODY)
    started = threading.Event()
    box: dict[str, int] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["port"] = loop.run_until_complete(server.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    yield box["port"]
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def _exchange(port: int, raw: bytes, half_close: bool = True) -> bytes:
    """Send ``raw``, optionally half-close, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _status_and_error(resp: bytes) -> tuple[int, str]:
    head, _, body = resp.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body).get("error", "")


def test_client_that_half_closes_after_sending_gets_every_answer(port: int) -> None:
    req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    for _ in range(20):
        resp = _exchange(port, req)
        assert resp.startswith(b"HTTP/1.1 200 OK"), resp
        assert resp.endswith(b'{"n":5}')
    # Pipelined requests before the half-close are all answered, in order.
    resp = _exchange(port, req * 3)
    assert resp.count(b"HTTP/1.1 200 OK") == 3


@pytest.mark.parametrize(("raw", "status", "words"), [
    (b"GARBAGE\r\n\r\n", 400, "malformed HTTP"),
    (b"GET /echo HTTP/9.9 extra\r\n\r\n", 400, "malformed HTTP"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "Content-Length"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "malformed HTTP"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400,
     "malformed HTTP"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n", 431,
     "headers are over"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, 413, "max_body_bytes"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 400, "before the request was complete"),
], ids=["bad-request-line", "bad-version", "bad-content-length", "two-content-lengths", "bad-chunking",
        "oversize-headers", "body-too-large", "cut-off-body"])
def test_malformed_http_gets_an_error_answer_not_a_silent_close(port: int, raw: bytes, status: int,
                                                                words: str) -> None:
    got, error = _status_and_error(_exchange(port, raw))
    assert got == status and words in error, (got, error)


def test_malformed_request_is_answered_without_a_half_close_too(port: int) -> None:
    # The client keeps its side open and waits: the answer comes, then the server closes.
    got, error = _status_and_error(_exchange(port, b"GARBAGE\r\n\r\n", half_close=False))
    assert got == 400 and "malformed HTTP" in error
