"""MinHash step 6 as tasks (data_pipeline/dedup/components.py): the partitioned Large-Star / Small-Star
components and the clusters written from them equal scipy's components of the same links."""
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline.dedup import components
from data_pipeline.dedup.common import Shard, read_decisions, read_partition, write_arrow
from data_pipeline.dedup.components import BYTES_PER_EDGE_ROW, write_component_clusters
from data_pipeline.dedup.unionfind import linked_components

N_DOCS = 60_000
PAR = dict(workers=1, executor="local", ray_address=None)


def _chain(rng, n):
    nodes = rng.permutation(n)
    return nodes[:-1], nodes[1:]


def _mixed_graph(rng):
    """Ranks 0..N_DOCS-1: a chain of 10,000 nodes in shuffled order, stars (one with its hub the
    largest node), 600 small components of 2-6 nodes with extra edges, and 800 isolated links."""
    labels = rng.permutation(N_DOCS)
    a, b, used = [], [], 0

    def take(k):
        nonlocal used
        used += k
        return labels[used - k:used]
    chain = take(10_000)
    a.append(chain[:-1])
    b.append(chain[1:])
    for leaves in (400, 50, 300):
        star = take(leaves + 1)
        hub = star.max() if leaves == 300 else star[0]
        a.append(np.full(leaves, hub))
        b.append(star[star != hub])
    for size in rng.integers(2, 7, 600):
        comp = take(size)
        tree = rng.integers(0, np.arange(1, size))                # each node after the first joins an earlier one
        extra = rng.integers(0, size, (2, size))
        a.append(np.concatenate([comp[1:], comp[extra[0]]]))
        b.append(np.concatenate([comp[tree], comp[extra[1]]]))
    pairs = take(1600)
    a.append(pairs[0::2])
    b.append(pairs[1::2])
    a, b = np.concatenate(a), np.concatenate(b)
    keep = a != b
    a, b = a[keep], b[keep]
    swap = rng.random(len(a)) < 0.5                               # either orientation, some links twice
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    again = rng.random(len(a)) < 0.1
    return np.concatenate([a, b[again]]), np.concatenate([b, a[again]])


def _run(work: Path, a, b, budget_mb: float, files: int = 5, seed: int = 0, ranges: int = 3):
    """Links (a, b) split over `files` link files, documents a permutation of the ranks, 4 shards
    with ids d<doc>; returns link_components' result and {doc: (root rank, size, duplicate_of, cluster_id)}."""
    rng = np.random.default_rng(seed)
    doc_of_rank = rng.permutation(N_DOCS)
    shards = [Shard(i, work, f"s{i}", i * N_DOCS // 4, N_DOCS // 4) for i in range(4)]
    for s in shards:
        write_arrow(work / "signatures" / f"{s.name}.arrow",
                    pa.table({"id": [f"d{d}" for d in range(s.first_doc, s.first_doc + s.rows)]}))
    file_of = rng.integers(0, files, len(a))
    links = []
    for f in range(files):
        node, root = a[file_of == f], b[file_of == f]
        links.append(work / "links" / f"part-{f:05d}.arrow")
        write_arrow(links[-1], pa.table({"node": node, "root": root, "node_doc": doc_of_rank[node],
                                         "root_doc": doc_of_rank[root]}))
    comp = write_component_clusters(work, shards, links, work / "signatures", ranges, budget_mb, "test", **PAR)
    rows = {}
    for group in sorted((work / "groups").glob("part-*.arrow")):
        for j in range(ranges):
            batch = read_partition(group, j).to_pydict()
            for doc, root, size, dup in zip(batch["doc"], batch["root"], batch["cluster_size"], batch["duplicate_of"]):
                assert doc not in rows, "a document in two clusters"
                rows[doc] = (root, size, dup)
    for s in shards:
        got = read_decisions(work, s).to_pydict()
        for doc, cluster in zip(got["doc"], got["cluster_id"]):
            rows[doc] += (cluster,)
    return comp, rows, doc_of_rank


def _phases_on_disk(work: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in (work / "components").glob("edges-*.arrow")}


def _expected(a, b, doc_of_rank):
    """The same rows from scipy's components (unionfind.linked_components) of all links at once."""
    nodes, roots = linked_components(a, b)
    survivors, cluster_of, sizes = np.unique(roots, return_inverse=True, return_counts=True)
    return {int(doc_of_rank[n]): (int(r), int(sizes[c]), None if n == r else f"d{doc_of_rank[r]}", int(c))
            for n, r, c in zip(nodes, roots, cluster_of.ravel())}


def test_partitioned_components_equal_scipy_on_chains_stars_and_small_components(tmp_path):
    rng = np.random.default_rng(11)
    a, b = _mixed_graph(rng)
    comp, rows, doc_of_rank = _run(tmp_path, a, b, budget_mb=0.5, files=20)
    assert comp["partitions"] == math.ceil(2 * len(a) * BYTES_PER_EDGE_ROW / 0.5 / 2 ** 20) >= 8
    assert comp["scatter"] == comp["partitions"] < 20          # link files read in groups: one per partition
    assert comp["rounds"] > 3                                # the shuffled chain needs several phases
    want = _expected(a, b, doc_of_rank)
    assert len(want) > 14_000 and len(set(v[0] for v in want.values())) == 1 + 3 + 600 + 800
    assert rows == want
    # Only the final stars' edges are left on disk (each phase removes the one before the last).
    assert _phases_on_disk(tmp_path) == {comp["final"]} == {comp["rounds"] - 1}


def test_one_partition_gives_the_same_clusters(tmp_path):
    rng = np.random.default_rng(11)
    a, b = _mixed_graph(rng)
    comp, rows, doc_of_rank = _run(tmp_path, a, b, budget_mb=1024)
    assert (comp["partitions"], comp["rounds"]) == (1, 1)
    assert rows == _expected(a, b, doc_of_rank)


@pytest.mark.parametrize("shuffled", [True, False])
def test_rounds_grow_like_the_log_of_a_chain(tmp_path, shuffled):
    rng = np.random.default_rng(4)
    rounds = {}
    for n in (100, 1_000, 10_000):
        a, b = _chain(rng, n) if shuffled else (np.arange(n - 1), np.arange(1, n))
        budget = 2 * (n - 1) * BYTES_PER_EDGE_ROW / 6 / 2 ** 20        # 6 partitions
        comp, rows, doc_of_rank = _run(tmp_path / str(n), a, b, budget_mb=budget)
        assert comp["partitions"] == 6 and rows == _expected(a, b, doc_of_rank)
        assert len(set(v[0] for v in rows.values())) == 1 and rows[int(doc_of_rank[0])][2] is None
        rounds[n] = comp["rounds"]
    # Each 10x longer chain adds a few phases (about 2 log2 n in all), not 10x as many.
    assert rounds[10_000] - rounds[1_000] <= 8 and rounds[1_000] - rounds[100] <= 8, rounds
    assert rounds[10_000] <= 2 * math.log2(10_000) + 4, rounds


def test_links_that_are_already_stars_take_one_phase(tmp_path):
    # what the verify step writes when every component lies within one verify partition
    rng = np.random.default_rng(2)
    nodes = rng.permutation(N_DOCS)[:3000].reshape(1000, 3)
    roots = nodes.min(axis=1)
    a = np.concatenate([np.where(nodes[:, k] == roots, nodes[:, 0], nodes[:, k]) for k in (1, 2)])   # the two non-roots
    b = np.concatenate([roots, roots])
    assert (a != b).all() and len(np.unique(np.concatenate([a, b]))) == 3000
    comp, rows, doc_of_rank = _run(tmp_path, a, b, budget_mb=0.05)
    assert comp["partitions"] > 1 and (comp["rounds"], comp["final"]) == (1, 0)
    assert rows == _expected(a, b, doc_of_rank)


def test_an_interrupted_run_resumes_without_redoing_finished_phases(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    a, b = _chain(rng, 3000)
    ran, kill = [], [True]
    original = components._small_star

    def failing(part, work, phase, *args):
        if kill[0] and phase == 4 and part == 2:
            raise RuntimeError("killed")
        ran.append(phase)
        return original(part, work, phase, *args)
    monkeypatch.setattr(components, "_small_star", failing)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path, a, b, budget_mb=0.05)
    assert not (tmp_path / "groups").exists()
    first = list(ran)
    ran.clear()
    kill[0] = False
    comp, rows, doc_of_rank = _run(tmp_path, a, b, budget_mb=0.05)
    assert rows == _expected(a, b, doc_of_rank)
    assert first.count(4) == 2 and ran.count(4) == comp["partitions"] - 2      # parts 0, 1 were done
    assert 2 not in ran


def test_at_most_two_phases_are_on_disk_while_a_phase_runs(tmp_path, monkeypatch):
    # the phase being written and its input: the one before that is removed once its reader's record exists
    seen = []
    for name in ("_large_star", "_small_star"):
        def watched(part, work, phase, *args, _contract=getattr(components, name)):
            seen.append(_phases_on_disk(work))
            return _contract(part, work, phase, *args)
        monkeypatch.setattr(components, name, watched)
    a, b = _chain(np.random.default_rng(8), 3000)
    comp, rows, doc_of_rank = _run(tmp_path, a, b, budget_mb=0.05)
    assert rows == _expected(a, b, doc_of_rank) and comp["rounds"] > 6
    assert len(seen) == comp["partitions"] * comp["rounds"] and max(len(s) for s in seen) == 2
    assert _phases_on_disk(tmp_path) == {comp["final"]}
