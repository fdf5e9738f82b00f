"""The shape of the code: what ARCHITECTURE.md promises, checked on the source itself."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the checkout, wherever netstats is installed
PACKAGE = ROOT / "src" / "netstats"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_boot" in path.parts:
            continue  # the start-up hook of child processes: imported by path, not as a module
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def internal_imports(name: str, tree: ast.Module, known: set[str]) -> dict[str, str]:
    """{imported netstats module: the local name bound to it} for every import in the module."""
    package = name if name in {"netstats", "netstats.export", "netstats._sources"} else name.rsplit(".", 1)[0]
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    out[full] = alias.asname or alias.name
                elif base in known:
                    out[base] = ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out[alias.name] = alias.asname or alias.name
    out.pop(name, None)
    return out


def test_the_internal_import_graph_has_no_cycle():
    trees = modules()
    graph = {
        name: set(internal_imports(name, tree, set(trees))) - {"netstats"} for name, tree in trees.items()
    }
    graph["netstats"] = set(internal_imports("netstats", trees["netstats"], set(trees)))
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_assigns_another_modules_globals():
    trees = modules()
    offences = []
    for name, tree in trees.items():
        aliases = {alias for alias in internal_imports(name, tree, set(trees)).values() if alias}
        for node in ast.walk(tree):
            targets = list(node.targets) if isinstance(node, ast.Assign) else []
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    targets.extend(target.elts)
                elif isinstance(target, ast.Starred):
                    targets.append(target.value)
                elif (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in aliases
                ):
                    offences.append(f"{name}:{target.lineno} assigns {target.value.id}.{target.attr}")
    assert offences == []


def test_architecture_md_names_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in text
    ]
    assert missing == [], f"ARCHITECTURE.md does not name {missing}"
