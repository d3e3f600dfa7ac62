"""The load generator's answer reader (benchmarks/loadgen.py) against a real socket server: every
framing the measured servers use (content-length, chunked with trailers, HTTP/1.0 close), split at
every awkward place, read to the end and counted; a truncated answer is an error, not a hang."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import loadgen  # noqa: E402

BIG = 1_060_000  # the PP-OCRv4 rec answer's size


def chunked(body: bytes, size: int, trailer: bytes = b"") -> bytes:
    parts = [b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n" + trailer + b"\r\n"


ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\ncontent-type: x\r\ncontent-length: %d\r\n\r\n" % BIG + b"a" * BIG,
    "small": b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello",
    "empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"b" * BIG, 70_000, b"x-t: 1\r\n"),
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "close": b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
}


async def serve(answer: bytes, pieces: list[int], close_after: bool) -> asyncio.AbstractServer:
    """Answers every request (a request ends with its 4-byte body "abcd") with ``answer``, written
    in pieces of the given sizes (the last repeated), each flushed on its own."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await r.readuntil(b"abcd")
                i, k = 0, 0
                while i < len(answer):
                    n = pieces[min(k, len(pieces) - 1)]
                    w.write(answer[i : i + n])
                    await w.drain()
                    await asyncio.sleep(0)
                    i, k = i + n, k + 1
                if close_after:
                    w.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def run(answer: bytes, pieces: list[int], close_after: bool = False, duration: float = 0.4) -> dict:
    async def main() -> dict:
        server = await serve(answer, pieces, close_after)
        port = server.sockets[0].getsockname()[1]
        try:
            return await loadgen.run_load(f"http://127.0.0.1:{port}/x", b"abcd", {}, 2, duration, warmup=0.05)
        finally:
            server.close()

    return asyncio.run(main())


@pytest.mark.parametrize("name", ["length", "small", "empty", "chunked"])
@pytest.mark.parametrize("pieces", [[1 << 30], [1, 2, 3, 5, 7, 11, 13, 65536]], ids=["whole", "split"])
def test_every_answer_is_read_to_its_end(name: str, pieces: list[int]) -> None:
    res = run(ANSWERS[name], pieces)
    status = int(ANSWERS[name][9:12])
    assert res["requests"] > 0 and res["error_samples"] == []
    assert res["codes"] == {str(status): res["requests"]}


@pytest.mark.parametrize("name", ["http10", "close"])
def test_a_server_that_closes_after_each_answer_is_reconnected(name: str) -> None:
    res = run(ANSWERS[name], [1 << 30], close_after=True)
    assert res["requests"] > 1 and res["error_samples"] == []


def test_a_truncated_answer_is_an_error_not_a_hang() -> None:
    cut = ANSWERS["length"][:5000]
    res = run(cut, [1 << 30], close_after=True, duration=0.3)
    assert res["requests"] == 0
    assert res["error_samples"] and all("closed" in e for e in res["error_samples"])


def test_a_garbled_head_is_an_error() -> None:
    res = run(b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n", [1 << 30], duration=0.3)
    assert res["requests"] == 0 and res["error_samples"]
