"""Every request gets an answer (issue 13): half-closed clients and malformed HTTP, over raw sockets.

The real transport (``HttpServer`` + the ``App`` error mapping) runs in-process on its own event loop
with an echo route; no model is needed to exercise framing.  Bodies with a ``Content-Length`` are
read from the socket straight into their own buffer past the parser: those tests send large bodies
in pieces, pipelined, and cut off, and check every byte and the alignment of binary tensor data.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from paddle_runtime.app import App
from paddle_runtime.transport import MAX_HEADER_BYTES, HttpServer, Request, Response, json_response

MAX_BODY = 400_000
BIG = 300_000  # over the transport's 64 KiB head buffer: most of it is read straight into the body buffer


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

    async def digest(req: Request) -> Response:
        # What a handler sees: every byte, and where binary tensor data after the JSON header starts.
        at = int(req.headers.get("inference-header-content-length", "0"))
        address = np.frombuffer(req.body, np.uint8)[at:].ctypes.data if len(req.body) > at else 0
        return json_response({"n": len(req.body), "sha256": hashlib.sha256(req.body).hexdigest(),
                              "aligned_64": address % 64 == 0})

    app.add_route("POST", "/echo", echo)
    app.add_route("POST", "/digest", digest)
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
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1), 413,
     "max_body_bytes"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 400, "before the request was complete"),
    (b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * (BIG - 1), 400,
     "before the request was complete"),
], ids=["bad-request-line", "bad-version", "bad-content-length", "two-content-lengths", "bad-chunking",
        "oversize-headers", "body-too-large", "cut-off-body", "cut-off-large-body"])
def test_malformed_http_gets_an_error_answer_not_a_silent_close(port: int, raw: bytes, status: int,
                                                                words: str) -> None:
    got, error = _status_and_error(_exchange(port, raw))
    assert got == status and words in error, (got, error)


def test_malformed_request_is_answered_without_a_half_close_too(port: int) -> None:
    # The client keeps its side open and waits: the answer comes, then the server closes.
    got, error = _status_and_error(_exchange(port, b"GARBAGE\r\n\r\n", half_close=False))
    assert got == 400 and "malformed HTTP" in error


def _digest_request(body: bytes, json_len: int | None = None) -> bytes:
    extra = b"Inference-Header-Content-Length: %d\r\n" % json_len if json_len is not None else b""
    return b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def _answers(resp: bytes) -> list[dict]:
    out = []
    while resp:
        head, _, rest = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        n = int(next(v for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
                     if k.lower() == b"content-length"))
        out.append(orjson.loads(rest[:n]))
        resp = rest[n:]
    return out


def test_large_bodies_arrive_whole_when_sent_in_pieces_and_pipelined(port: int) -> None:
    rng = np.random.default_rng(0)
    bodies = [rng.integers(0, 256, BIG, dtype=np.uint8).tobytes() for _ in range(2)]
    # One body trickled in pieces: the first read ends inside the body, the rest goes straight into
    # its buffer over several reads.
    req = _digest_request(bodies[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(req), 70_000):
            s.sendall(req[i:i + 70_000])
            time.sleep(0.02)
        s.shutdown(socket.SHUT_WR)
        resp = b"".join(iter(lambda: s.recv(65536), b""))
    assert _answers(resp) == [{"n": BIG, "sha256": hashlib.sha256(bodies[0]).hexdigest(), "aligned_64": True}]
    # Pipelined: big, small, big, empty on one connection, in one send; answers in order.
    small = b'{"inputs": []}'
    resp = _exchange(port, _digest_request(bodies[0]) + _digest_request(small) + _digest_request(bodies[1])
                     + _digest_request(b""))
    assert [(a["n"], a["sha256"]) for a in _answers(resp)] == [
        (len(b), hashlib.sha256(b).hexdigest()) for b in (bodies[0], small, bodies[1], b"")]


@pytest.mark.parametrize("json_len", [0, 1, 13, 190, 4097])
def test_binary_tensor_data_after_the_json_header_is_64_byte_aligned(port: int, json_len: int) -> None:
    body = b"{" * json_len + np.arange(BIG // 4, dtype=np.float32).tobytes()
    (answer,) = _answers(_exchange(port, _digest_request(body, json_len)))
    assert answer == {"n": len(body), "sha256": hashlib.sha256(body).hexdigest(), "aligned_64": True}
