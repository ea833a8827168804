"""Import cycles between the modules of a package, lazy imports (inside functions) included.

    python tools/import_cycles.py [package]     # prints each cycle; exit 1 when there is one

Used by tests/test_architecture.py; grimp (import-linter's graph) reads every import statement,
wherever it stands, so a cycle hidden by a lazy import still counts.
"""

from __future__ import annotations

import sys

import grimp


def cycles(package: str = "harness") -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph = grimp.build_graph(package, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in index:
            visit(m)
    return sorted(found)


if __name__ == "__main__":
    found = cycles(sys.argv[1] if len(sys.argv) > 1 else "harness")
    for cycle in found:
        print(" <-> ".join(cycle))
    print(f"{len(found)} import cycle(s)")
    sys.exit(1 if found else 0)
