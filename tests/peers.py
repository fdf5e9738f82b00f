"""Independent peers: servers that count, in their own code and their own process, every byte
they read and write on each connection. The suite's expected figures come from here.

Nothing in this file imports netstats. Run as a script, it serves one peer and talks to the
test over stdin/stdout: it prints {"port": ...} when listening, then answers each "counts"
line with the per-connection counts as JSON.

Kinds: echo (echo every byte), http (GET /bytes/N answers N bytes; any body is read and
acknowledged; keep-alive; a request with an X-Tag header has its bytes, as read and written,
added to that tag's total: the "tags" line answers them as JSON), resp (a small Redis: PING,
ECHO, SET, GET, DEL, QUIT), smtp (enough for smtplib), starttls (a line protocol that upgrades
to TLS), udp (echo datagrams), websocket
(a `websockets` echo server that counts nothing itself: put a relay in front), relay (forwards
to --backend, counting what passes; terminates TLS when given a certificate, so its counts are
the plaintext), proxy (an HTTP CONNECT proxy, HTTPS with a certificate: a relay whose backend
the client names), socks (a SOCKS5 proxy, no authentication, CONNECT only: the same relay).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

# ---- the peer process -------------------------------------------------------------------


class PeerCounts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.tags: dict[str, list[int]] = {}  # X-Tag value -> [bytes read, bytes written]

    def add_tag(self, tag: str, rx: int, tx: int) -> None:
        with self.lock:
            pair = self.tags.setdefault(tag, [0, 0])
            pair[0] += rx
            pair[1] += tx

    def new(self) -> dict[str, Any]:
        record = {"rx": 0, "tx": 0, "closed": False}
        with self.lock:
            self.records.append(record)
        return record


class Counted:
    """The peer's own count of one connection: wraps recv/send of its socket."""

    def __init__(self, sock: Any, record: dict[str, Any]) -> None:
        self.sock, self.record = sock, record

    def recv(self, n: int) -> bytes:
        try:
            data: bytes = self.sock.recv(n)
        except (ConnectionError, ssl.SSLError, OSError):
            return b""
        self.record["rx"] += len(data)
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.record["tx"] += len(data)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.record["closed"] = True


def serve_echo(conn: Counted, args: Any) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.send(data)


def _read_line(conn: Counted, buf: bytearray) -> bytes | None:
    while b"\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line + b"\n"


def _read_exact(conn: Counted, buf: bytearray, n: int) -> bytes | None:
    while len(buf) < n:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def serve_http(conn: Counted, args: Any) -> None:
    buf = bytearray()
    while True:
        request = _read_line(conn, buf)
        if request is None:
            return
        headers = {}
        read = len(request)  # this request's bytes, as parsed (keep-alive: the buffer holds more)
        while True:
            line = _read_line(conn, buf)
            if line is None:
                return
            read += len(line)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length and _read_exact(conn, buf, length) is None:
            return
        parts = request.split()
        path = parts[1].decode() if len(parts) > 1 else "/"
        size = int(path.rsplit("/", 1)[1]) if path.startswith("/bytes/") else 2
        body = b"b" * size if path.startswith("/bytes/") else b"ok"
        close = headers.get("connection", "").lower() == "close"
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
        ).encode()
        if "x-tag" in headers:  # before sending: once the client has the answer, so does "tags"
            args.tally.add_tag(headers["x-tag"], read + length, len(head) + len(body))
        conn.send(head + body)
        if close:
            return


def serve_resp(conn: Counted, args: Any) -> None:
    store: dict[bytes, bytes] = {}
    buf = bytearray()
    while True:
        line = _read_line(conn, buf)
        if line is None or not line.startswith(b"*"):
            return
        items = []
        for _ in range(int(line[1:])):
            head = _read_line(conn, buf)
            if head is None:
                return
            item = _read_exact(conn, buf, int(head[1:]) + 2)
            if item is None:
                return
            items.append(item[:-2])
        command = items[0].upper()
        if command == b"PING":
            conn.send(b"+PONG\r\n")
        elif command == b"SET":
            store[items[1]] = items[2]
            conn.send(b"+OK\r\n")
        elif command in (b"GET", b"ECHO"):
            value = store.get(items[1]) if command == b"GET" else items[1]
            conn.send(b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
        elif command == b"DEL":
            conn.send(b":%d\r\n" % int(store.pop(items[1], None) is not None))
        elif command == b"QUIT":
            conn.send(b"+OK\r\n")
            return
        elif command in (b"HELLO", b"CLIENT", b"SELECT"):
            conn.send(b"-ERR unknown command\r\n" if command == b"HELLO" else b"+OK\r\n")
        else:
            conn.send(b"-ERR unknown command\r\n")


def serve_relay(conn: Counted, args: Any) -> None:
    _relay(conn, socket.create_connection((args.backend_host, args.backend_port)))


def serve_proxy(conn: Counted, args: Any) -> None:
    """An HTTP proxy that tunnels (CONNECT host:port), over TLS with --cert. The record keeps
    the CONNECT exchange apart (connect_rx, connect_tx); the rest is the tunnel, relayed."""
    buf = bytearray()
    request = b""
    while True:
        line = _read_line(conn, buf)
        if line is None:
            return
        request += line
        if line == b"\r\n":
            break
    method, target = request.split(b" ")[:2]
    if method != b"CONNECT" or buf:
        conn.send(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        return
    host, _, port = target.decode().rpartition(":")
    backend = socket.create_connection((host.strip("[]"), int(port)))
    conn.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
    conn.record["connect_rx"], conn.record["connect_tx"] = conn.record["rx"], conn.record["tx"]
    _relay(conn, backend)


def serve_socks(conn: Counted, args: Any) -> None:
    """A SOCKS5 proxy (RFC 1928: no authentication, CONNECT to an IPv4 address, a name or an
    IPv6 address). The record keeps the negotiation apart (connect_rx, connect_tx); the rest is
    the tunnel, relayed."""
    buf = bytearray()
    greeting = _read_exact(conn, buf, 2)
    if greeting is None or greeting[0] != 5 or _read_exact(conn, buf, greeting[1]) is None:
        return
    conn.send(b"\x05\x00")  # version 5, no authentication
    head = _read_exact(conn, buf, 4)  # version, command, reserved, address type
    if head is None or head[1] != 1:
        conn.send(b"\x05\x07\x00\x01" + bytes(6))  # command not supported
        return
    if head[3] == 1:
        raw = _read_exact(conn, buf, 4)
        host = socket.inet_ntop(socket.AF_INET, raw) if raw is not None else None
    elif head[3] == 4:
        raw = _read_exact(conn, buf, 16)
        host = socket.inet_ntop(socket.AF_INET6, raw) if raw is not None else None
    else:
        size = _read_exact(conn, buf, 1)
        raw = _read_exact(conn, buf, size[0]) if size is not None else None
        host = raw.decode("idna") if raw is not None else None
    port = _read_exact(conn, buf, 2)
    if host is None or port is None or buf:
        return
    backend = socket.create_connection((host, int.from_bytes(port, "big")))
    bound = backend.getsockname()
    family, kind = (socket.AF_INET6, b"\x04") if ":" in bound[0] else (socket.AF_INET, b"\x01")
    conn.send(b"\x05\x00\x00" + kind + socket.inet_pton(family, bound[0]) + bound[1].to_bytes(2, "big"))
    conn.record["connect_rx"], conn.record["connect_tx"] = conn.record["rx"], conn.record["tx"]
    _relay(conn, backend)


def _relay(conn: Counted, backend: socket.socket) -> None:
    done = threading.Event()

    def downstream() -> None:
        try:
            while True:
                data = backend.recv(65536)
                if not data:
                    break
                conn.send(data)
        except OSError:
            pass
        finally:
            done.set()
            try:
                conn.sock.shutdown(socket.SHUT_WR) if not isinstance(conn.sock, ssl.SSLSocket) else None
            except OSError:
                pass

    threading.Thread(target=downstream, daemon=True).start()
    while True:
        data = conn.recv(65536)
        if not data:
            break
        backend.sendall(data)
    try:
        backend.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    done.wait(30)
    backend.close()


def serve_starttls(conn: Counted, args: Any) -> None:
    """A plain line protocol that switches to TLS mid-stream: "STARTTLS\r\n" -> "OK\r\n",
    then TLS (with --cert) and echo. The record keeps the plain phase apart too."""
    buf = bytearray()
    line = _read_line(conn, buf)
    if line != b"STARTTLS\r\n" or buf:
        return
    conn.send(b"OK\r\n")
    conn.record["plain_rx"], conn.record["plain_tx"] = conn.record["rx"], conn.record["tx"]
    try:
        conn.sock = args.context.wrap_socket(conn.sock, server_side=True)
    except (ssl.SSLError, OSError):
        return
    conn.record["tls"] = conn.sock.version()
    serve_echo(conn, args)


def serve_smtp(conn: Counted, args: Any) -> None:
    """Enough SMTP for smtplib.sendmail: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""
    buf = bytearray()
    conn.send(b"220 peer ESMTP\r\n")
    while True:
        line = _read_line(conn, buf)
        if line is None:
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            conn.send(b"250-peer\r\n250 SIZE 10000000\r\n")
        elif verb == b"DATA":
            conn.send(b"354 go ahead\r\n")
            while _read_line(conn, buf) not in (None, b".\r\n"):
                pass
            conn.send(b"250 queued\r\n")
        elif verb == b"QUIT":
            conn.send(b"221 bye\r\n")
            return
        else:
            conn.send(b"250 ok\r\n")


SERVERS = {
    "echo": serve_echo,
    "http": serve_http,
    "resp": serve_resp,
    "relay": serve_relay,
    "proxy": serve_proxy,
    "socks": serve_socks,
    "starttls": serve_starttls,
    "smtp": serve_smtp,
}
TLS_LATER = {"starttls"}  # kinds that start TLS themselves, with args.context


def _tcp_main(args: Any, tally: PeerCounts) -> int:
    family = socket.AF_UNIX if args.unix else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if args.unix:
        listener.bind(args.unix)
        where: Any = args.unix
    else:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        where = listener.getsockname()[1]
    listener.listen(128)
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert)
    serve = SERVERS[args.kind]
    args.context = context
    args.tally = tally
    if args.kind in TLS_LATER:
        if context is None:
            raise SystemExit(f"the {args.kind} peer needs --cert")
        context = None

    def handle(raw: socket.socket) -> None:
        record = tally.new()
        sock: Any = raw
        try:
            if context is not None:
                sock = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            record["closed"] = True
            raw.close()
            return
        counted = Counted(sock, record)
        try:
            serve(counted, args)
        except OSError:
            pass
        finally:
            counted.close()

    def accept_loop() -> None:
        while True:
            raw, _ = listener.accept()
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return where  # type: ignore[no-any-return]


def _udp_main(args: Any, tally: PeerCounts) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    record = tally.new()

    def loop() -> None:
        while True:
            data, addr = sock.recvfrom(65536)
            record["rx"] += len(data)
            record["tx"] += sock.sendto(data, addr)

    threading.Thread(target=loop, daemon=True).start()
    return int(sock.getsockname()[1])


def _websocket_main(args: Any, tally: PeerCounts) -> int:
    """A real `websockets` echo server. Its I/O is the library's own, so it counts nothing:
    put a relay in front of it, Peer("relay", backend=..., cert=...), and take the relay's counts."""
    from websockets.sync.server import ServerConnection, serve

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    server = serve(echo, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.socket.getsockname()[1])


def peer_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=[*SERVERS, "udp", "websocket"])
    parser.add_argument("--cert")
    parser.add_argument("--unix")
    parser.add_argument("--backend-host", default="127.0.0.1")
    parser.add_argument("--backend-port", type=int)
    args = parser.parse_args(argv)
    tally = PeerCounts()
    main = {"udp": _udp_main, "websocket": _websocket_main}.get(args.kind, _tcp_main)
    where = main(args, tally)
    print(json.dumps({"port": where}), flush=True)
    for line in sys.stdin:
        if line.strip() == "counts":
            with tally.lock:
                print(json.dumps(tally.records), flush=True)
        elif line.strip() == "tags":
            with tally.lock:
                print(json.dumps(tally.tags), flush=True)


# ---- the test side ----------------------------------------------------------------------


class Peer:
    """A peer process. `port` to connect to; `counts()` / `wait_closed()` for its own figures."""

    def __init__(self, kind: str, *, cert: str | None = None, unix: str | None = None, backend: Any = None):
        cmd = [sys.executable, os.path.abspath(__file__), kind]
        if cert:
            cmd += ["--cert", cert]
        if unix:
            cmd += ["--unix", unix]
        if backend:
            cmd += ["--backend-host", backend[0], "--backend-port", str(backend[1])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {kind} did not start")
        self.port = json.loads(line)["port"]
        self.address = unix if unix else ("127.0.0.1", self.port)

    def counts(self) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def tags(self) -> dict[str, list[int]]:
        """{X-Tag value: [bytes read, bytes written]} over the requests that carried one (http)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("tags\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def wait_closed(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first n connections' counts, once the peer has closed all of them."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.counts()
            if len(records) >= n and all(r["closed"] for r in records[:n]):
                return records[:n]
            if time.monotonic() > deadline:
                raise AssertionError(f"peer saw {records}, expected {n} closed connections")
            time.sleep(0.01)

    def totals(self, n: int, timeout: float = 10.0) -> tuple[int, int]:
        """(rx, tx) summed over the first n connections, as the peer counted them."""
        records = self.wait_closed(n, timeout)
        return sum(r["rx"] for r in records), sum(r["tx"] for r in records)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    peer_main(sys.argv[1:])
