"""Closed-loop HTTP/1.1 load generator (keep-alive, pre-encoded requests), used by serving.py.

Why not wrk/hey: neither is installed on the machines this runs on, and a Python generator that
only writes pre-built bytes and reads ``content-length`` bytes back costs a few tens of
microseconds per request, far below the millisecond-scale latencies measured.  Each of
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


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response (content-length or chunked); returns (status, server wants to close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, close = 0, False, head.startswith(b"HTTP/1.0")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v:
            chunked = True
        elif k == b"connection":
            close = v == b"close"
    if chunked:  # KServe (uvicorn) streams binary responses chunked
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _conn(host: str, port: int, req: bytes, stop_at: float, warm_until: float,
                lat: list[float], codes: dict[int, int], errors: list[str]) -> None:
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            writer.write(req)
            status, close = await _read_response(reader)
            t1 = time.perf_counter()
            # Count what completes inside the window: slow requests started during warm-up
            # still count toward throughput, and nothing finishing after the window does.
            if warm_until <= t1 <= stop_at:
                lat.append(t1 - t0)
                codes[status] = codes.get(status, 0) + 1
            if close:  # e.g. gunicorn sync workers: one request per connection, reconnect (counted)
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        errors.append(repr(e))
    finally:
        if writer is not None:
            writer.close()


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
