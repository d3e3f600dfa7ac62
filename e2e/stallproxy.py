"""A TCP proxy that can go silent: it stops forwarding on its open connections without closing them.

What a NAT table flush, a load balancer's idle cut or a hung middlebox does to a long-lived watch:
no FIN, no RST, just nothing. ``stall()`` freezes every connection open at that moment (their bytes
stay unread, their sockets open); connections made afterwards are forwarded normally, as a client
that reconnects would find them. Plain threads, bytes copied as they are (TLS passes through).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    stalled: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.close()


class StallProxy:
    """``127.0.0.1:<port>`` forwarding to ``(host, port)``; ``stall()`` silences the open connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self.accepted = 0  # connections so far: a client that reconnects shows here

    def start(self) -> StallProxy:
        threading.Thread(target=self._accept, name="stallproxy-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # upstream down (an API server restart): the client sees a reset
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns = [c for c in self._conns if not c.closed.is_set()]
                self._conns.append(conn)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(conn, src, dst), daemon=True).start()

    @staticmethod
    def _pump(conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not conn.closed.is_set():
                data = src.recv(65536)
                if conn.stalled.is_set():
                    break  # silent from now on: drop what came, read no more, close nothing
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        if conn.stalled.is_set():
            conn.closed.wait()  # keep both sockets open and unread until the proxy is closed
        else:
            conn.close()

    def stall(self) -> int:
        """Silence every open connection; returns how many."""
        with self._lock:
            live = [c for c in self._conns if not c.closed.is_set()]
        for c in live:
            c.stalled.set()
        return len(live)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
