"""TLS that is not simply the ssl module over a socket: TLS inside TLS (requests and urllib3
through an HTTPS proxy, the inner TLS an SSLObject over the proxy's SSLSocket), and the same
through a plain CONNECT proxy. rx/tx are the CONNECT exchange plus the innermost plaintext;
every expected count is the proxy's own (peers.py "proxy": the CONNECT exchange) and the
target server's own (its plaintext).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import urllib3
from helpers import MODES, capture_in

SIZES = (300_000, 1_500_000)  # (up, down): a POST's body and the answer's


def _expected(proxy: Any, target: Any) -> tuple[int, int]:
    """(tx, rx) of the client's connection to the proxy: the CONNECT exchange, then the tunnel's
    plaintext as the target counted it."""
    (tunnel,) = proxy.wait_closed(1)
    (served,) = target.wait_closed(1)
    return tunnel["connect_rx"] + served["rx"], tunnel["connect_tx"] + served["tx"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proxy_tls", [True, False], ids=["https-proxy", "connect-proxy"])
@pytest.mark.parametrize("target_host", ["localhost", "127.0.0.1"])
def test_requests_through_a_proxy(peer, ca_file, mode, proxy_tls, target_host):
    target = peer("http", tls=True)
    proxy = peer("proxy", tls=proxy_tls)
    scheme = "https" if proxy_tls else "http"
    proxies = {"https": f"{scheme}://localhost:{proxy.port}"}
    up, down = SIZES
    with capture_in(mode) as cap:
        with requests.Session() as session:
            session.trust_env = False
            r = session.post(
                f"https://{target_host}:{target.port}/bytes/{down}",
                data=b"u" * up,
                headers={"Connection": "close"},  # the tunnel closes after the answer
                proxies=proxies,
                verify=ca_file,
                timeout=30,
            )
            assert r.status_code == 200 and len(r.content) == down
    (conn,) = cap.connections
    assert conn.closed is not None and conn.error is None
    assert (conn.tx, conn.rx) == _expected(proxy, target)
    assert conn.tls == "TLSv1.3"  # the tunnel's: the one the application's bytes went through
    assert conn.host == "localhost"  # the proxy's name, asked for; the target's address names none
    assert conn.remote == ("127.0.0.1", proxy.port)


@pytest.mark.parametrize("mode", MODES)
def test_urllib3_through_an_https_proxy(peer, ca_file, mode):
    target = peer("http", tls=True)
    proxy = peer("proxy", tls=True)
    up, down = SIZES
    with capture_in(mode) as cap:
        with urllib3.ProxyManager(f"https://localhost:{proxy.port}", ca_certs=ca_file) as pool:
            r = pool.request(
                "POST",
                f"https://localhost:{target.port}/bytes/{down}",
                body=b"u" * up,
                headers={"Connection": "close"},
                timeout=30.0,
            )
            assert r.status == 200 and len(r.data) == down
    (conn,) = cap.connections
    assert conn.closed is not None and conn.error is None
    assert (conn.tx, conn.rx) == _expected(proxy, target)
    assert conn.tls == "TLSv1.3"
    assert conn.host == "localhost"


def test_an_address_as_server_hostname_names_no_host(peer, client_context):
    """TLS to an address (server_hostname "127.0.0.1"): host None, as for any address asked for."""
    import socket

    target = peer("echo", tls=True)
    with capture_in("kernel-counted") as cap:
        raw = socket.create_connection(("127.0.0.1", target.port))
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
    (conn,) = cap.connections
    assert conn.host is None and conn.tls is not None
    assert (conn.tx, conn.rx) == target.totals(1)
