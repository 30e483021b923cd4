#!/usr/bin/env python3
"""Checks that no file of router/src imports one that imports it back.

Builds the graph of `crate::`, `super::` and `self::` paths between the files of
router/src (a path names the deepest file module it reaches: `crate::shard::mail::Mail`
is shard/mail.rs, `crate::shard::Shard` is shard/mod.rs) and reports every cycle.

A child module using its parent's (or any ancestor's) items is fine: an edge from a
file to a module that contains it is not counted (shard/rooms.rs using
`super::Shard`, anything using the crate root). Every other edge counts, including
one from a parent to its child (shard/mod.rs naming `rooms::RoomSlot`), so siblings
can only depend on each other one way.

Usage: check-module-cycles.py [SRC_DIR]   (default: router/src next to this script)
Exit status 1 with each cycle printed, 0 when the graph is acyclic.
"""

import os
import re
import sys


def module_of(rel):
    """'shard/mail.rs' -> ('shard', 'mail'); 'shard/mod.rs' -> ('shard',); 'lib.rs' -> ()."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def expand_use_trees(text):
    """Yields every path of `use` items, with `{a, b::c}` groups expanded."""
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        yield from _expand(m.group(1).replace("\n", " ").strip())


def _expand(tree):
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        yield tree.split(" as ")[0].strip()
        return
    prefix = tree[:brace]
    inner = tree[brace + 1 : tree.rfind("}")]
    depth, start, items = 0, 0, []
    for i, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    for item in items:
        if item.strip():
            for sub in _expand(item):
                yield prefix + sub if sub != "self" else prefix.rstrip(":")


PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "router", "src")
    src = os.path.normpath(src)
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                rel = os.path.relpath(os.path.join(root, n), src).replace(os.sep, "/")
                if rel == "main.rs":
                    continue  # the binary's root, not a module of the library
                files[module_of(rel)] = rel
    graph = {rel: set() for rel in files.values()}
    for mod, rel in files.items():
        text = strip_comments(open(os.path.join(src, rel), encoding="utf-8").read())
        paths = set(PATH.findall(text)) | set(
            p for p in expand_use_trees(text) if p.split("::")[0] in ("crate", "super", "self")
        )
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                base, rest = (), segs[1:]
            else:
                base = mod
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
                rest = segs
            target = base
            for s in rest:
                if base + (s,) in files or target + (s,) in files:
                    target = target + (s,)
                else:
                    break
            if target not in files or target == mod:
                continue
            if mod[: len(target)] == target:
                continue  # a child using an ancestor's items
            graph[rel].add(files[target])
    cycles = find_cycles(graph)
    for c, comp in cycles:
        print("module cycle: " + " -> ".join(c + [c[0]]))
        if len(comp) > len(c):
            print("  (files importing each other in a circle: " + ", ".join(sorted(comp)) + ")")
    if cycles:
        return 1
    print(f"ok: {len(graph)} files, {sum(len(v) for v in graph.values())} imports, no cycle")
    return 0


def find_cycles(graph):
    """One cycle per strongly connected component with more than one file (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append((cycle_in(graph, set(comp)), comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycle_in(graph, comp):
    """A shortest cycle through the first file of the component (BFS back to it)."""
    start = min(comp)
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in comp:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path))
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


if __name__ == "__main__":
    sys.exit(main())
