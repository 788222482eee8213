"""Connected components of duplicate links, each rooted at its smallest node.

Nodes are survivor ranks, so a component's root is the document that survives. scipy's
connected_components labels the components (no per-link Python loop); partitions of links are
reduced to (node, root) stars and the stars of all partitions merged the same way.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def linked_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, roots): every node that has a link, sorted, and the smallest node of its component."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes, local = np.unique(np.concatenate([a, b]), return_inverse=True)   # only linked nodes
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (local[:len(a)], local[len(a):])), shape=(n, n))
    _, label = connected_components(graph.tocsr(), directed=True, connection="weak")
    _, first = np.unique(label, return_index=True)   # labels are 0..k-1; nodes are sorted, so first = smallest
    return nodes, nodes[first[label]]


def component_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """root[i] = smallest node connected to i by the edges (a[k], b[k]), for nodes 0..n-1."""
    roots = np.arange(n, dtype=np.int64)
    nodes, linked = linked_components(a, b)
    roots[nodes] = linked
    return roots


def merge_links(parts: Iterable[tuple[np.ndarray, np.ndarray]], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """linked_components of the links of every part, holding about max(limit, 2 x linked nodes) links.

    Links are added part by part; past the limit (or twice what the last collapse left) they are
    collapsed to one (node, root) link per linked node that is not a root, which keeps every component.
    """
    a, b, held, kept = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0, 0
    for part_a, part_b in parts:
        a.append(part_a)
        b.append(part_b)
        held += len(part_a)
        if held > max(limit, 2 * kept):
            nodes, roots = linked_components(np.concatenate(a), np.concatenate(b))
            moved = nodes != roots
            a, b, held = [nodes[moved]], [roots[moved]], int(moved.sum())
            kept = held
    return linked_components(np.concatenate(a), np.concatenate(b))
