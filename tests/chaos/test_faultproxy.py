"""The fault proxy itself, against a local echo server: each fault does what it says."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from chaos.faultproxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.close()


def connect(proxy: FaultProxy) -> socket.socket:
    host, port = proxy.endpoint.split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def round_trip(sock: socket.socket, data: bytes) -> tuple[bytes, float]:
    start = time.monotonic()
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - start


def test_passes_bytes_through_unchanged(echo):
    with FaultProxy(*echo) as proxy, connect(proxy) as sock:
        payload = bytes(range(256)) * 1000
        assert round_trip(sock, payload)[0] == payload
        time.sleep(0.1)  # the count follows the send
        assert proxy.forwarded == 2 * len(payload)


def test_latency_and_jitter_delay_both_directions_in_order(echo):
    with FaultProxy(*echo) as proxy, connect(proxy) as sock:
        proxy.set(latency=0.1, jitter=0.05)
        for i in range(3):
            got, took = round_trip(sock, f"m{i}".encode())
            assert got == f"m{i}".encode()
            assert 0.2 <= took < 2.0


def test_blackhole_holds_data_until_healed(echo):
    with FaultProxy(*echo) as proxy, connect(proxy) as sock:
        proxy.set(blackhole=True)
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.heal()
        sock.settimeout(5)
        assert sock.recv(10) == b"held"


def test_hold_replies_lets_requests_through_and_holds_answers(echo):
    with FaultProxy(*echo) as proxy, connect(proxy) as sock:
        proxy.set(hold_replies=True)
        sock.sendall(b"asked")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert proxy.forwarded == len(b"asked")  # the request went through
        proxy.heal()
        sock.settimeout(5)
        assert sock.recv(10) == b"asked"


def test_reset_all_and_refuse_reset_connections(echo):
    with FaultProxy(*echo) as proxy:
        sock = connect(proxy)
        assert round_trip(sock, b"x")[0] == b"x"
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        sock.close()
        proxy.set(refuse=True)
        with pytest.raises(ConnectionResetError), connect(proxy) as late:
            late.recv(1)  # (or the RST already failed the connect)
        assert proxy.resets == 2


def test_drip_bounds_the_rate(echo):
    with FaultProxy(*echo) as proxy, connect(proxy) as sock:
        proxy.set(drip=100_000)
        got, took = round_trip(sock, b"d" * 50_000)
        assert got == b"d" * 50_000
        assert took >= 0.4  # 50 kB each way at 100 kB/s, pipelined
