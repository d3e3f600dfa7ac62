"""Closed-loop HTTP/1.1 load generator (keep-alive, pre-encoded requests), used by serving.py.

Why not wrk/hey: neither is installed on the machines this runs on, and a Python generator that
only writes pre-built bytes and counts the answer's bytes into one reused buffer (``_Client``) costs
a few tens of microseconds per small answer and ~0.35 ms per 1 MB one (mostly the kernel's copy),
below the millisecond-scale latencies measured.  Each of
``concurrency`` connections sends its next request as soon as the previous answer arrives.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080/v2/models/m/infer \
        --body-file req.bin --header Inference-Header-Content-Length:123 -c 8 -d 10
prints one JSON object: requests, errors, qps, p50/p90/p99/mean latency in ms, status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

_HEAD, _BODY, _CHUNK_LINE, _TRAILER = range(4)
_MAX_HEAD = 1 << 16


class _Client(asyncio.BufferedProtocol):
    """One keep-alive connection. Answers are read into one reused buffer and parsed just enough to
    find their end (content-length or chunked): a body is counted, never copied. Reading a 1.06 MB
    answer through ``asyncio.StreamReader`` (64 KiB reads, pause and resume, a join and a slice) took
    ~1.0 ms on this box against ~0.35 ms for a blocking ``recv_into``; this way it costs about the
    latter, so a large answer's latency is the server's and the kernel's, not the client's."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.head = bytearray()  # a head (or chunk-size line) split across reads
        self.state, self.left, self.status, self.close, self.chunked = _HEAD, 0, 0, False, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def answer(self, req: bytes) -> asyncio.Future[tuple[int, bool]]:
        """Send ``req``; the future gets (status, the server wants to close) when its answer is read."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(req)
        return self.waiter

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._parse(nbytes)
        except ValueError as e:
            self._fail(e)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed before the answer was complete"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _line(self, i: int, n: int, sep: bytes) -> tuple[bytes | None, int]:
        """The bytes up to ``sep`` (which may straddle reads) and the index after it; (None, n) when
        ``sep`` is not in this read yet (what there is is kept)."""
        old = len(self.head)
        if not old:
            k = self.buf.find(sep, i, n)
            if k >= 0:
                return bytes(self.buf[i:k]), k + len(sep)
        self.head += self.view[i : min(n, i + _MAX_HEAD)]
        k = self.head.find(sep, max(0, old - len(sep) + 1))
        if k < 0:
            if len(self.head) > _MAX_HEAD:
                raise ValueError("answer head too long")
            return None, n
        line, after = bytes(self.head[:k]), i + k + len(sep) - old
        self.head.clear()
        return line, after

    def _parse(self, n: int) -> None:
        i = 0
        while i < n:
            if self.state == _BODY:
                take = min(self.left, n - i)
                i += take
                self.left -= take
                if not self.left:
                    self.state = _CHUNK_LINE if self.chunked else self._done()
            elif self.state == _HEAD:
                head, i = self._line(i, n, b"\r\n\r\n")
                if head is not None:
                    self._head(head)
            elif self.state == _CHUNK_LINE:
                line, i = self._line(i, n, b"\r\n")
                if line is not None:
                    size = int(line.split(b";")[0], 16)
                    self.state, self.left = (_BODY, size + 2) if size else (_TRAILER, 0)
            else:  # _TRAILER: trailer lines up to an empty one
                line, i = self._line(i, n, b"\r\n")
                if line == b"":
                    self.state = self._done()

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0][9:12])
        length, self.chunked, self.close = 0, False, lines[0].startswith(b"HTTP/1.0")
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k, v = k.strip().lower(), v.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v:  # KServe (uvicorn) streams binary answers
                self.chunked = True
            elif k == b"connection":
                self.close = v == b"close"
        if self.chunked:
            self.state = _CHUNK_LINE
        elif length:
            self.state, self.left = _BODY, length
        else:
            self.state = self._done()

    def _done(self) -> int:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.close))
        return _HEAD


async def _open(host: str, port: int) -> tuple[asyncio.Transport, _Client]:
    return await asyncio.get_running_loop().create_connection(_Client, host, port)  # type: ignore[return-value]


async def _conn(host: str, port: int, req: bytes, stop_at: float, warm_until: float,
                lat: list[float], codes: dict[int, int], errors: list[str]) -> None:
    transport = None
    try:
        transport, client = await _open(host, port)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            status, close = await client.answer(req)
            t1 = time.perf_counter()
            # Count what completes inside the window: slow requests started during warm-up
            # still count toward throughput, and nothing finishing after the window does.
            if warm_until <= t1 <= stop_at:
                lat.append(t1 - t0)
                codes[status] = codes.get(status, 0) + 1
            if close:  # e.g. gunicorn sync workers: one request per connection, reconnect (counted)
                transport.close()
                transport, client = await _open(host, port)
    except (OSError, ValueError) as e:
        errors.append(repr(e))
    finally:
        if transport is not None:
            transport.close()


def build_request(url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[str, int, bytes]:
    u = urlsplit(url)
    head = [f"{method} {u.path or '/'} HTTP/1.1", f"Host: {u.hostname}:{u.port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return u.hostname or "127.0.0.1", u.port or 80, ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def run_load(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float,
                   warmup: float = 1.0) -> dict:
    host, port, req = build_request(url, body, headers)
    lat: list[float] = []
    codes: dict[int, int] = {}
    errors: list[str] = []
    start = time.perf_counter()
    warm_until, stop_at = start + warmup, start + warmup + duration
    await asyncio.gather(*(_conn(host, port, req, stop_at, warm_until, lat, codes, errors)
                           for _ in range(concurrency)))
    elapsed = max(1e-9, time.perf_counter() - warm_until)
    lat.sort()

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    ok = codes.get(200, 0)
    return {"concurrency": concurrency, "requests": len(lat), "ok": ok, "errors": len(errors) + len(lat) - ok,
            "qps": ok / elapsed, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "mean_ms": 1000 * sum(lat) / len(lat) if lat else float("nan"),
            "codes": {str(k): v for k, v in codes.items()}, "error_samples": errors[:3]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[], help="Name:Value")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    headers = dict(h.split(":", 1) for h in a.header)
    with open(a.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run_load(a.url, body, headers, a.concurrency, a.duration, a.warmup))
    json.dump(res, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
