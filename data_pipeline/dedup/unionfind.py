"""Connected components of duplicate links, each rooted at its smallest node.

Nodes are survivor ranks, so a component's root is the document that survives.
"""
from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]   # path halving
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller node becomes the root: the root is always the component's minimum.
            self.parent[max(ra, rb)] = min(ra, rb)


def component_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """root[i] = smallest node connected to i by the edges (a[k], b[k])."""
    roots = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return roots
    nodes, local = np.unique(np.concatenate([a, b]), return_inverse=True)   # only linked nodes
    la, lb = local[:len(a)].tolist(), local[len(a):].tolist()
    uf = UnionFind(len(nodes))
    for x, y in zip(la, lb):
        uf.union(x, y)
    local_roots = np.fromiter((uf.find(i) for i in range(len(nodes))), dtype=np.int64, count=len(nodes))
    roots[nodes] = nodes[local_roots]    # local order follows node order, so minimum stays minimum
    return roots
