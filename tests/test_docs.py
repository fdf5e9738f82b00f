"""The documentation: every Python example in docs/*.md and README.md runs, and the site builds.

Each page's ```python blocks are extracted and run in order, in one fresh namespace per page, so a
block may use what an earlier block of its page defined. The examples that talk to a server use
the names docs/index.md describes, given here by loopback servers this module starts:

- `URL`: an http:// address (a server that answers any request with 200 and a known body);
- `TLS_URL`: https://localhost:PORT/, the same server behind TLS, its CA trusted through
  SSL_CERT_FILE and REQUESTS_CA_BUNDLE while the page runs;
- `ADDRESS`: ("127.0.0.1", PORT) of URL's server, for raw sockets.

A block that cannot run as it stands has, on the line before its fence, the marker
`<!-- not run: REASON -->` (the reason is required, and shows in this test's output). A block
that is a test module has `<!-- pytest file -->`: it is written to a file with the names above
defined at its top and run by pytest in a process of its own (the netstats plugin loads from
its entry point). A Python block with neither runs, and a failure of it fails its page's test;
a fence with no language at all fails too, so no example hides from this test.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import pathlib
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import netstats
from netstats import _state

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>.*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->\s*$")
PYTEST_FILE = re.compile(r"^\s*<!--\s*pytest file\s*-->\s*$")
BODY = b"netstats docs example\n" * 40  # 880 bytes: what the servers answer to any request


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str  # "" (runs), "not run: REASON" or "pytest file"


def blocks(path: pathlib.Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        language = match["info"].strip().split(" ")[0].strip("{}.").lower()
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = ""
        if m := NOT_RUN.match(previous):
            marker = f"not run: {m['reason']}"
        elif PYTEST_FILE.match(previous):
            marker = "pytest file"
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append(Block(path.name, i + 1, language, "\n".join(body) + "\n", marker))
        i = j + 1
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real services are
    wbufsize = -1  # headers and body in one write (two would meet the peer's delayed ACK: 40 ms)

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    do_GET = do_POST = do_PUT = do_HEAD = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Servers:
    url: str
    tls_url: str
    address: tuple[str, int]
    ca_file: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("docs-tls")
    ca_file = str(folder / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (plain, secure)]
    for thread in threads:
        thread.start()
    port = plain.server_address[1]
    yield Servers(
        url=f"http://127.0.0.1:{port}/",
        tls_url=f"https://localhost:{secure.server_address[1]}/",
        address=("127.0.0.1", port),
        ca_file=ca_file,
    )
    for server in (plain, secure):
        server.shutdown()
        server.server_close()


def names(servers: Servers) -> dict[str, object]:
    return {"URL": servers.url, "TLS_URL": servers.tls_url, "ADDRESS": servers.address}


def every_block() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def test_the_docs_have_pages_and_python_examples():
    assert (ROOT / "docs" / "index.md").exists()
    assert sum(block.language in PYTHON for block in every_block()) >= 10


def test_every_fence_names_its_language():
    bare = [f"{block.page}:{block.line}" for block in every_block() if not block.language]
    assert bare == [], "a fence without a language (```python, ```sh, ```text ...)"


def test_markers_stand_only_before_python_blocks():
    misplaced = [
        f"{block.page}:{block.line}"
        for block in every_block()
        if block.marker and block.language not in PYTHON
    ]
    assert misplaced == []


WITH_PYTHON = [page for page in PAGES if any(block.language in PYTHON for block in blocks(page))]


@pytest.mark.parametrize("page", WITH_PYTHON, ids=[page.name for page in WITH_PYTHON])
def test_the_python_examples_of_the_page_run(
    page: pathlib.Path, servers: Servers, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    page_blocks = [block for block in blocks(page) if block.language in PYTHON]
    runnable = [block for block in page_blocks if not block.marker]
    monkeypatch.setenv("SSL_CERT_FILE", servers.ca_file)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", servers.ca_file)
    monkeypatch.chdir(tmp_path)  # what an example writes stays in the test's own folder
    namespace: dict[str, object] = {"__name__": "__docs__", **names(servers)}
    before = len(_state.active)
    try:
        for block in runnable:
            code = compile(block.code, f"{page.name}, the block at line {block.line}", "exec")
            with contextlib.redirect_stdout(io.StringIO()):
                exec(code, namespace)
    finally:
        left = len(_state.active) - before
        while len(_state.active) > before:
            netstats.release()
    assert left == 0, f"{page.name}'s examples left {left} capture(s) active: an example should stop its own"


@pytest.mark.parametrize(
    "block",
    [block for block in every_block() if block.marker == "pytest file"],
    ids=lambda block: f"{block.page}:{block.line}",
)
def test_the_test_modules_in_the_docs_pass(block: Block, servers: Servers, tmp_path: pathlib.Path) -> None:
    header = "".join(f"{name} = {value!r}\n" for name, value in names(servers).items())
    (tmp_path / "test_example.py").write_text(header + block.code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {**os.environ, "SSL_CERT_FILE": servers.ca_file, "REQUESTS_CA_BUNDLE": servers.ca_file}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "test_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_blocks_not_run_say_why():
    marked = [block for block in every_block() if block.marker.startswith("not run")]
    for block in marked:
        assert len(block.marker) > len("not run: ") + 10, f"{block.page}:{block.line}: say why it is not run"


def test_the_site_builds_with_no_warning(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "NO_MKDOCS_2_WARNING": "1",
        },  # Material's notice of its successor: not a warning of ours
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    shutil.rmtree(tmp_path / "site")
