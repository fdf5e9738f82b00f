"""pyOpenSSL's TLS (OpenSSL.SSL.Connection): socket-backed, and memory-BIO as Twisted and treq
drive it. rx/tx are the plaintext and `tls` the negotiated version, as with the ssl module.
Every expected count is the server's own (peers.py counts its plaintext).

Twisted's reactor runs once per process: each Twisted client runs in a child process of its
own, captured there, and prints its records as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import MODES, capture_in

SSL = pytest.importorskip("OpenSSL.SSL")

TESTS = os.path.dirname(os.path.abspath(__file__))


def _context(ca_file: str) -> object:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(ca_file)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    return ctx


@pytest.mark.parametrize("mode", MODES)
def test_socket_backed_connection_counts_the_plaintext(peer, ca_file, mode):
    echo = peer("echo", tls=True)
    sizes = (1, 1000, 100_000)
    with capture_in(mode) as cap:
        sock = socket.create_connection(("127.0.0.1", echo.port))
        tls = SSL.Connection(_context(ca_file), sock)
        tls.set_tlsext_host_name(b"localhost")
        tls.set_connect_state()
        tls.do_handshake()
        for size in sizes:
            tls.sendall(b"x" * size)
            got = 0
            while got < size:
                got += len(tls.recv(65536))
        buf = bytearray(10)
        tls.send(b"0123456789")
        assert tls.recv(4, socket.MSG_PEEK)  # a peek is not a read
        got = 0
        while got < 10:
            got += tls.recv_into(buf, 10 - got)
        tls.shutdown()
        sock.close()
    (conn,) = cap.connections
    assert conn.closed is not None and conn.error is None
    assert (conn.tx, conn.rx) == echo.totals(1) == (sum(sizes) + 10,) * 2
    assert conn.tls == tls.get_protocol_version_name() == "TLSv1.3"
    assert conn.host == "localhost"
    assert conn.wire_tx is None or conn.wire_tx > conn.tx  # the ciphertext, apart


CLIENT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from helpers import capture_in
    if {early!r}:
        import treq  # imported before the capture: patched when it starts
    with capture_in({mode!r}) as cap:
        import treq
        from twisted.internet import reactor
        from twisted.internet.ssl import Certificate, trustRootFromCertificates
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
        with open({ca_file!r}, "rb") as f:
            root = trustRootFromCertificates([Certificate.loadPEM(f.read())])
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=root))
        out = {{}}
        d = treq.post({url!r}, data=b"u" * {up}, agent=agent, headers={{"Connection": "close"}})
        d.addCallback(treq.content)
        d.addCallback(lambda body: out.update(n=len(body)))
        d.addErrback(lambda failure: out.update(error=repr(failure.value)))
        d.addBoth(lambda _: reactor.stop())
        reactor.callLater(60, reactor.stop)
        reactor.run()
    records = [c.as_dict() for c in cap.connections]
    print(json.dumps({{"out": out, "records": records}}, default=str))
    """
)


def _treq(tmp_path, ca_file, mode, early, url, up):
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(tests=TESTS, early=early, mode=mode, ca_file=ca_file, url=url, up=up))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("early", [False, True], ids=["imported-during", "imported-before"])
@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_treq(peer, ca_file, tmp_path, mode, early, tls):
    """treq (Twisted's Agent; over TLS, pyOpenSSL's memory BIO) to "localhost", resolved by
    Twisted's own resolver: the plaintext, the TLS version, the name asked for."""
    pytest.importorskip("treq")
    server = peer("http", tls=tls)
    up, down = 160, 1_000_000
    scheme = "https" if tls else "http"
    result = _treq(tmp_path, ca_file, mode, early, f"{scheme}://localhost:{server.port}/bytes/{down}", up)
    assert result["out"] == {"n": down}
    (record,) = [r for r in result["records"] if r["transport"] == "tcp" and r["error"] is None]
    assert (record["tx"], record["rx"]) == server.totals(1)  # (the peer's rx, tx)
    assert record["tx"] > up and record["rx"] > down  # (the HTTP heads: the peer counted them)
    assert record["tls"] == ("TLSv1.3" if tls else None)
    assert record["host"] == "localhost"
    assert record["closed"] is not None and record["error"] is None


SERVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from helpers import capture_in
    with capture_in({mode!r}, servers=True) as cap:
        from twisted.internet import endpoints, protocol, reactor

        class Echo(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

            def connectionLost(self, reason):
                reactor.callLater(0.2, reactor.stop)

        spec = "ssl:0:interface=127.0.0.1:privateKey={cert_file}:certKey={cert_file}"
        endpoint = endpoints.serverFromString(reactor, spec)
        d = endpoint.listen(protocol.Factory.forProtocol(Echo))
        d.addCallback(lambda port: print(json.dumps({{"port": port.getHost().port}}), flush=True))
        reactor.callLater(60, reactor.stop)
        reactor.run()
    records = [c.as_dict() for c in cap.connections]
    print(json.dumps({{"records": records}}, default=str))
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_twisted_tls_server(cert_file, client_context, tmp_path, mode):
    """A Twisted TLS server (pyOpenSSL's memory BIO) with servers=True: the plaintext, as the
    client (stock ssl, not captured, in this process) counted it."""
    pytest.importorskip("twisted")
    script = tmp_path / "server.py"
    script.write_text(SERVER.format(tests=TESTS, mode=mode, cert_file=cert_file))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = json.loads(child.stdout.readline())["port"]
        sent = received = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                for size in (1, 5_000, 300_000):
                    tls.sendall(b"s" * size)
                    sent += size
                    got = 0
                    while got < size:
                        chunk = tls.recv(65536)
                        assert chunk, "the server closed early"
                        got += len(chunk)
                    received += got
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait(10)
    result = json.loads(out.strip().splitlines()[-1])
    (record,) = [r for r in result["records"] if r["side"] == "server"]
    assert (record["rx"], record["tx"]) == (sent, received)
    assert record["tls"] == "TLSv1.3"
    assert record["closed"] is not None
