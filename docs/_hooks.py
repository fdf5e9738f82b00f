"""MkDocs hooks for netstats' site (mkdocs.yml: `hooks:`); not a page (`exclude_docs`).

The docstrings show their examples as interpreter sessions (`>>>` lines), which Markdown would
read as nested block quotes. This adds to the site's Markdown (the pages' and mkdocstrings' alike)
a step that puts each run of such lines, with the output lines after them, in a `pycon` fence.
"""

from __future__ import annotations

from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority


class Sessions(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence = ""  # the fence we are inside, if any: its lines are left alone
        session = False
        for line in lines:
            stripped = line.lstrip()
            if not session and stripped.startswith(("```", "~~~")):
                mark = stripped[:3]
                fence = "" if fence == mark else (fence or mark)
            elif not fence and not session and stripped.startswith(">>>"):
                out.append("```pycon")
                session = True
            elif session and not stripped:
                out.append("```")
                session = False
            out.append(line)
        if session:
            out.append("```")
        return out


class SessionsExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Markdown's name)
        # After whitespace is normalised (30), before fenced code is read (superfences: 25).
        md.preprocessors.register(Sessions(md), "netstats_sessions", 28)


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(SessionsExtension())
    return config
