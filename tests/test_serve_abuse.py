"""A real `secure-ft serve` process under abuse, on loopback: slow, idle, too many and vanishing clients.

Half-open connections and headers or bodies sent at a byte at a time are closed at their
deadline; headers over 64 KiB get 431; an idle kept-alive connection is closed; one
connection past the limit gets 503 with ``Retry-After``; a client that disconnects mid-body is counted in ``/metrics`` and
logged in one line, without a traceback. The soak (bounded in clients and seconds) shows 16
normal clients served within the latency target next to slow clients, and the server's open
files bounded and back to their level afterwards (`bench/serve_soak.py` runs it bigger).
"""

from __future__ import annotations

import re
import socket
import sys
import time

import httpx
import pytest

from serve_helpers import LOOPBACK, REPO, serve_processes, signed_bundle

TIMEOUT = 1.5  # the server's header and body deadlines, and its keep-alive, in these tests
MAX_CONNECTIONS = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    signed = signed_bundle(tmp_path_factory.mktemp("abuse"))
    with serve_processes(tmp_path_factory.mktemp("abuse-logs")) as start:
        running = start(signed.bundle, "--public-key", str(signed.public_key), "--model-name", "m", "--threads", "1",
                        "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT), "--keep-alive", str(TIMEOUT),
                        "--max-connections", str(MAX_CONNECTIONS))
        running.wait_ready()
        yield running


def _connect(server) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, server.port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.25) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` while `trickle` goes out a byte per `every` s; what it sent."""
    started, received = time.monotonic(), b""
    for index in range(max(len(trickle), 1)):
        if trickle:
            try:
                sock.sendall(trickle[index:index + 1])
            except OSError:
                break
        sock.settimeout(every)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            if time.monotonic() - started > 20:
                break
            continue
        received += chunk
        if not chunk or received:
            break
    if not trickle:  # half-open: just wait for the close
        sock.settimeout(20)
        received += sock.recv(4096)
    sock.close()
    return time.monotonic() - started, received


def _metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_half_open_and_slow_header_and_body_clients_are_closed_at_their_deadline(server):
    headers = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    took, _ = _closed_after(_connect(server))  # half-open: connects, sends nothing
    assert TIMEOUT - 0.1 <= took <= TIMEOUT + 2.0
    took, _ = _closed_after(_connect(server), headers)  # headers at 4 bytes/s
    assert TIMEOUT - 0.1 <= took <= TIMEOUT + 2.0
    sock = _connect(server)
    sock.sendall(headers)
    took, _ = _closed_after(sock, b"{" + b" " * 499)  # complete headers, then the body at 4 bytes/s
    assert TIMEOUT - 0.1 <= took <= TIMEOUT + 2.0
    assert _metric(server, "secure_ft_connections_closed_total", '{reason="header_timeout"}') >= 2
    assert _metric(server, "secure_ft_connections_closed_total", '{reason="body_timeout"}') >= 1
    assert httpx.post(f"{server.url}/predict", json={"texts": ["loan"]}, timeout=30).status_code == 200


def test_headers_over_64_kib_get_431_and_nothing_runs(server):
    sock = _connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n")
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431") and answer.count(b"HTTP/1.1") == 1
    assert _metric(server, "secure_ft_connections_closed_total", '{reason="headers_too_large"}') >= 1


def test_an_idle_kept_alive_connection_is_closed(server):
    sock = _connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in sock.recv(4096)
    took, rest = _closed_after(sock)
    # the response body may arrive in a second segment; nothing else may follow before the close
    assert rest in (b"", b'{"live":true}') and took <= TIMEOUT + 2.0


def test_one_connection_past_the_limit_gets_503_with_retry_after(server):
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = _connect(server)
        answer = extra.recv(4096)
        extra.close()
    finally:
        for sock in idle:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
    time.sleep(0.5)
    assert httpx.post(f"{server.url}/predict", json={"texts": ["loan"]}, timeout=30).status_code == 200
    assert _metric(server, "secure_ft_connections_closed_total", '{reason="connection_limit"}') >= 1


def test_client_disconnects_are_counted_and_logged_in_one_line_each(server):
    before = _metric(server, "secure_ft_client_disconnects_total", '{route="/predict"}')
    lines_before = server.output.count("outcome=client_disconnected")
    for _ in range(20):
        sock = _connect(server)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"texts\": [")
        time.sleep(0.05)
        sock.close()
    deadline = time.monotonic() + 10
    while _metric(server, "secure_ft_client_disconnects_total", '{route="/predict"}') < before + 20:
        assert time.monotonic() < deadline, server.output[-3000:]
        time.sleep(0.2)
    assert server.output.count("outcome=client_disconnected") - lines_before == 20
    assert "Traceback" not in server.output and "Exception in ASGI application" not in server.output


@pytest.mark.slow
def test_soak_normal_clients_are_served_next_to_slow_ones_and_open_files_stay_bounded(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import serve_soak

    slow, seconds, limit = 60, 6.0, 200  # scaled to a 2-core machine; `bench/serve_soak.py --slow 500` runs it bigger
    signed = signed_bundle(tmp_path / "run")
    with serve_processes(tmp_path) as start:
        server = start(signed.bundle, "--public-key", str(signed.public_key), "--threads", "1",
                       "--header-timeout", "2", "--body-timeout", "2", "--max-connections", str(limit))
        server.wait_ready()
        result = serve_soak.run(server.url, server.process.pid, slow, 16, seconds)
    print("\n".join(serve_soak.report(result, slow, 16, seconds, limit)))
    alone, attacked = result["alone"], result["attacked"]
    assert alone["failures"] == 0 and attacked["failures"] == 0
    assert attacked["requests"] > 0 and attacked["p95"] <= 2 * alone["p95"] + 0.25
    assert attacked["slow_connections"] > slow  # the server closed them and they came back
    assert result["closed"].get("header_timeout", 0) > 0 and result["closed"].get("body_timeout", 0) > 0
    assert attacked["most_open_files"] <= limit + 64
    assert result["open_files_after"] <= result["open_files_before"] + 8
