"""Connected components of duplicate links, each rooted at its smallest node.

Nodes are survivor ranks, so a component's root is the document that survives. scipy's
connected_components labels the components (no per-link Python loop): a verify partition's links
are reduced to (node, root) stars here, and the stars of all partitions joined by components.py
(or here, when they all fit one partition).
"""
from __future__ import annotations

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
