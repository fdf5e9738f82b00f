"""The web middleware (netstats.integrations): a service under a real server (uvicorn for ASGI,
werkzeug for WSGI) making outbound calls per request; every route's bytes equal what the http
peer counted for the calls made by that route's requests (each call names its route in X-Tag)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import requests.adapters
from helpers import tag_counts_of
from peers import Peer

import netstats
from netstats import _tags
from netstats.integrations import asgi, wsgi

PeerFactory = Callable[..., Peer]
TIMEOUT = 10.0


pytestmark = pytest.mark.usefixtures("tags_off_after")


def tagged(cap: netstats.Capture) -> dict[Any, Any]:
    return {value: row for value, row in cap.by_tag("route").items() if value is not None}


def fetch(session: requests.Session, url: str, tag: str | None = None) -> bytes:
    with session.get(url, headers={"X-Tag": tag} if tag else {}, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.text
        return r.content


def hammer(urls: list[str]) -> list[bytes]:
    """GET every URL, four at a time, each thread with its own session (untagged client side)."""

    def one(url: str) -> bytes:
        with requests.Session() as session:
            session.trust_env = False
            return fetch(session, url)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, urls, timeout=60))


# ---- ASGI under uvicorn ------------------------------------------------------------------


def starlette_app(backend: int) -> Any:
    import aiohttp
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    state: dict[str, aiohttp.ClientSession] = {}

    async def call(template: str, size: int) -> int:
        if "session" not in state:  # one connection for every request: limit=1
            state["session"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            )
        url = f"http://127.0.0.1:{backend}/bytes/{size}"
        async with state["session"].get(url, headers={"X-Tag": template}) as r:
            return len(await r.read())

    async def user(request: Any) -> PlainTextResponse:
        uid = request.path_params["uid"]
        return PlainTextResponse(str(await call("/users/{uid:int}", 100 * uid)))

    async def items(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(await call("/api/items", 7)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:  # (passed through by the middleware)
        yield
        if "session" in state:
            await state["session"].close()

    routes = [Route("/users/{uid:int}", user), Mount("/api", routes=[Route("/items", items)])]
    return Starlette(routes=routes, lifespan=lifespan), state


def test_asgi_middleware_under_uvicorn_tags_each_requests_outbound_bytes_with_its_route_template(
    peer: PeerFactory,
) -> None:
    import uvicorn

    http = peer("http")
    app, state = starlette_app(http.port)
    config = uvicorn.Config(
        asgi.TagRequests(app, label="route"),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        loop="asyncio",  # uvloop's plain TCP cannot be split by tag: test_uvloop checks it says so
    )
    server = uvicorn.Server(config)
    with netstats.capture() as cap:
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/users/{uid}" for uid in (1, 2, 30, 4)] * 3 + [f"{base}/api/items"] * 5
        bodies = hammer(urls)
        server.should_exit = True
        thread.join(20)
    assert not thread.is_alive()
    assert bodies[:4] == [b"100", b"200", b"3000", b"400"]
    truth = tag_counts_of(http)
    assert set(truth) == {"/users/{uid:int}", "/api/items"}
    assert tagged(cap) == truth
    backend = [c for c in cap.connections if c.remote == ("127.0.0.1", http.port) and c.error is None]
    assert len(backend) == 1  # every request's call shared it


def test_asgi_route_falls_back_to_the_path_for_an_app_without_routes() -> None:
    import asyncio

    seen: list[Any] = []

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        seen.append(_tags.current.get())

    asyncio.run(asgi.TagRequests(bare, label="endpoint")({"type": "http", "path": "/x/1"}, None, None))
    asyncio.run(asgi.TagRequests(bare)({"type": "lifespan"}, None, None))
    assert seen[0] is not None and dict(seen[0].key.labels) == {"endpoint": "/x/1"}
    assert seen[1] is None
    with pytest.raises(TypeError, match="label must be a non-empty str"):
        asgi.TagRequests(bare, label="")


# ---- WSGI under werkzeug -------------------------------------------------------------------


def flask_app(backend: int) -> Any:
    import flask

    app = flask.Flask("tagged")
    session = requests.Session()  # one pooled connection for every request
    session.trust_env = False
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=1, pool_block=True))

    def call(template: str, size: int) -> bytes:
        return fetch(session, f"http://127.0.0.1:{backend}/bytes/{size}", template)

    @app.route("/users/<int:uid>")
    def user(uid: int) -> str:
        return str(len(call("/users/<int:uid>", 100 * uid)))

    @app.route("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[bytes]:  # calls out while the server iterates the response
            for size in (5, 50):
                yield str(len(call("/stream", size))).encode() + b" "

        return flask.Response(chunks())

    return app, session


def serve_wsgi(app: Any) -> Any:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("wrap", ["app", "wsgi_app"])
def test_wsgi_middleware_tags_each_requests_outbound_bytes_with_its_flask_rule(
    peer: PeerFactory, wrap: str
) -> None:
    http = peer("http")
    app, session = flask_app(http.port)
    if wrap == "wsgi_app":
        app.wsgi_app = wsgi.TagRequests(app.wsgi_app)  # type: ignore[method-assign]
        served = app
    else:
        served = wsgi.TagRequests(app)
    with netstats.capture() as cap:
        server, thread = serve_wsgi(served)
        base = f"http://127.0.0.1:{server.server_port}"
        bodies = hammer([f"{base}/users/{uid}" for uid in (1, 2, 30)] * 3 + [f"{base}/stream"] * 3)
        server.shutdown()
        thread.join(20)
        session.close()
        server.server_close()
    assert bodies[:3] == [b"100", b"200", b"3000"] and bodies[-1] == b"5 50 "
    truth = tag_counts_of(http)
    assert set(truth) == {"/users/<int:uid>", "/stream"}
    assert tagged(cap) == truth


def test_wsgi_middleware_tags_a_plain_app_by_path_and_sets_the_span_attributes(peer: PeerFactory) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    http = peer("http")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")

    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        with requests.Session() as session:
            session.trust_env = False
            body = fetch(session, f"http://127.0.0.1:{http.port}/bytes/{len(path) * 10}", path)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    tagged_app = wsgi.TagRequests(plain, span_attributes=True)

    def traced(environ: dict[str, Any], start_response: Any) -> Any:
        with tracer.start_as_current_span(environ["PATH_INFO"]):
            return list(tagged_app(environ, start_response))  # the span covers the iteration

    with netstats.capture() as cap:
        server, thread = serve_wsgi(traced)
        base = f"http://127.0.0.1:{server.server_port}"
        assert hammer([f"{base}/a", f"{base}/bbbb"]) == [b"20", b"50"]
        server.shutdown()
        thread.join(20)
        server.server_close()
    truth = tag_counts_of(http)
    assert tagged(cap) == truth
    got = {
        s.name: (s.attributes["netstats.rx"], s.attributes["netstats.tx"]) for s in spans.get_finished_spans()
    }
    assert got == {path: (row["rx"], row["tx"]) for path, row in truth.items()}


DJANGO_SERVICE = """
import json, sys, threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
from django.conf import settings

settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test", MIDDLEWARE=[])
django.setup()

import requests
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

import netstats
from netstats.integrations.wsgi import TagRequests

backend = int(sys.argv[1])
session = requests.Session()
session.trust_env = False


def user(request, uid):
    url = f"http://127.0.0.1:{backend}/bytes/{uid * 100}"
    with session.get(url, headers={"X-Tag": "/users/<int:uid>"}, timeout=10) as r:
        return HttpResponse(str(len(r.content)))


urlpatterns = [path("users/<int:uid>", user)]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


with netstats.capture() as cap:
    server = make_server("127.0.0.1", 0, TagRequests(get_wsgi_application()), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with requests.Session() as client:
        client.trust_env = False
        for uid in (1, 2, 30):
            with client.get(f"http://127.0.0.1:{server.server_port}/users/{uid}", timeout=10) as r:
                assert r.text == str(uid * 100), r.text
    server.shutdown()
    thread.join(10)
    server.server_close()
    session.close()
print(json.dumps({k: v for k, v in cap.by_tag("route").items() if k is not None}))
"""


def test_wsgi_middleware_tags_a_django_request_with_its_url_pattern(peer: PeerFactory, tmp_path: Any) -> None:
    """In a process of its own: Django's settings are global to a process."""
    import subprocess
    import sys

    http = peer("http")
    script = tmp_path / "service.py"
    script.write_text(DJANGO_SERVICE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(http.port)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    truth = tag_counts_of(http)
    assert set(truth) == {"/users/<int:uid>"}
    assert json.loads(done.stdout) == truth


def test_asgi_middleware_sets_the_requests_bytes_on_the_current_span(peer: PeerFactory) -> None:
    import asyncio

    import aiohttp
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    http = peer("http")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            url = f"http://127.0.0.1:{http.port}/bytes/{len(scope['path'])}"
            async with session.get(url, headers={"X-Tag": scope["path"]}) as r:
                await r.read()

    tagged_app = asgi.TagRequests(app, span_attributes=True)

    async def main() -> None:
        for path in ("/one", "/three"):
            with tracer.start_as_current_span(path):
                await tagged_app({"type": "http", "path": path}, None, None)

    with netstats.capture():
        asyncio.run(main())
    truth = tag_counts_of(http)
    got = {
        s.name: (s.attributes["netstats.rx"], s.attributes["netstats.tx"]) for s in spans.get_finished_spans()
    }
    assert got == {path: (row["rx"], row["tx"]) for path, row in truth.items()}
