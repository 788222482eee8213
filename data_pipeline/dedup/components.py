"""Connected components of the MinHash links and the clusters written from them, as tasks over
partitions (MinHash step 6): a task holds about one partition, whatever the number of linked
documents, except that a node's rows stay together, so one very large cluster lands in one task
(about BYTES_PER_EDGE_ROW a member; see the end of this docstring).

Nodes are survivor ranks, so a component's smallest node is the document that survives. The
components come from alternating Large-Star and Small-Star contractions (Kiveris et al. 2014,
"Connected Components in MapReduce and Beyond"), one shuffle per phase; every phase's edges are
rows (node, other) in one write_partitioned file per producing task, batch p = partition p (a hash of
`node`), and a task reads batch p of every file of the phase before.
  0. scatter      per group of link files (verify partitions; as many groups as partitions, at
                  most), in parallel: their links as edges in both directions, and the (rank,
                  document) of every linked node, both by partition of the rank. Grouped so that
                  every later task reads one batch of about P files, not of every verify partition's.
  1, 2, ...       per partition, in parallel, alternately
     large star   (odd phases) the distinct rows (u, v) grouped by u, m = min(u, neighbours of u):
                  every neighbour v > u gets the edge (v, m), written once, by partition of v;
     small star   (even phases) rows (u, v), v < u, grouped by u, m = the smallest v: every v != m
                  and u itself get the edge (v, m), written in both directions.
                  A large-star task counts the rows that show its input is not yet stars: (u, v),
                  v < u, where u has another neighbour (schema metadata `count`); the driver sums
                  the counts, and a large-star phase that finds none ends the loop: the phase
                  before, in both directions, holds every component as a star on its smallest node.
                  Links already stars (a component within one verify partition) end at phase 1.
                  With one partition, phase 1 is unionfind.linked_components instead.
  members         per partition, in parallel: from the final stars (the last small-star phase), the
                  leaves' documents by partition of their root, the roots' documents by input shard.
  survivors       per input shard, in parallel: the ids of the roots whose document it holds.
  groups          per partition, in parallel: its roots' whole clusters (common.write_clusters); then
                  common.write_decisions numbers them in survivor order.
No phase writes more rows than twice the links (neither contraction adds edges), so
P = ceil(2 x links x BYTES_PER_EDGE_ROW / memory_budget_mb). A node's rows stay together: a partition
also holds every edge of its nodes, so a star of d leaves needs about d x BYTES_PER_EDGE_ROW in one task.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import atomic_write_json, read_json

from .common import (Shard, hash_partition, partition_count, read_columns, read_partition, unique_pairs,
                     write_clusters, write_decisions, write_partitioned)
from .parallel import run_tasks
from .unionfind import linked_components

BYTES_PER_EDGE_ROW = 160    # a phase task: rows read, distinct sorted pairs, groups, rows made, their partition order
EDGE_SCHEMA = pa.schema([("node", pa.int64()), ("other", pa.int64())])
RANK_DOC_SCHEMA = pa.schema([("rank", pa.int64()), ("doc", pa.int64())])
MEMBER_SCHEMA = pa.schema([("root", pa.int64()), ("doc", pa.int64())])
SURVIVOR_SCHEMA = pa.schema([("root", pa.int64()), ("doc", pa.int64()), ("id", pa.string())])


def _edges_path(work: Path, phase: int, producer: int) -> Path:
    return work / "components" / f"edges-{phase:03d}-{producer:05d}.arrow"


def _docs_path(work: Path, producer: int) -> Path:
    return work / "components" / f"docs-{producer:05d}.arrow"


# ---- edges -------------------------------------------------------------------------------------------

def _write_edges(path: Path, a: np.ndarray, b: np.ndarray, parts: int, count: int, both: bool) -> None:
    """Edges (a, b) as rows (node, other) by partition of node; with `both`, (b, a) as well; the
    task's count in the schema metadata."""
    node, other = (np.concatenate([a, b]), np.concatenate([b, a])) if both else (a, b)
    schema = EDGE_SCHEMA.with_metadata({"count": str(count)})
    write_partitioned(path, schema, {"node": node, "other": other}, hash_partition(node, parts), parts)


def _read_edges(work: Path, phase: int, producers: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows (node, other) of one partition of a phase, sorted by (node, other)."""
    batches = [read_partition(_edges_path(work, phase, p), part) for p in range(producers)]
    node, other = (np.concatenate([b.column(c).to_numpy() for b in batches] + [np.zeros(0, np.int64)])
                   for c in EDGE_SCHEMA.names)
    return unique_pairs(node, other)


def _groups_of(node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by node: the first row of each node's group, and each row's group."""
    new = np.ones(len(node), dtype=bool)
    new[1:] = node[1:] != node[:-1]
    return np.flatnonzero(new), np.cumsum(new) - 1


def _rows(path: Path) -> int:
    """Rows of an Arrow IPC file, from its batches' headers (memory-mapped: no data read)."""
    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_file(src)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _metadata_int(path: Path, key: str) -> int:
    with pa.memory_map(str(path)) as src:
        return int(pa.ipc.open_file(src).schema.metadata[key.encode()])


# ---- 0. scatter --------------------------------------------------------------------------------------

def _scatter_links(producer: int, links: list[Path], work: Path, parts: int) -> None:
    """Link files as edges in both directions, and their nodes' documents, by partition of the rank."""
    tables = []
    for path in links:
        with pa.memory_map(str(path)) as src:
            tables.append(pa.ipc.open_file(src).read_all())
    node, root, node_doc, root_doc = (np.concatenate([t.column(c).to_numpy() for t in tables] + [np.zeros(0, np.int64)])
                                      for c in ("node", "root", "node_doc", "root_doc"))
    del tables
    ranks, first = np.unique(np.concatenate([node, root]), return_index=True)
    docs = np.concatenate([node_doc, root_doc])[first]
    write_partitioned(_docs_path(work, producer), RANK_DOC_SCHEMA, {"rank": ranks, "doc": docs},
                      hash_partition(ranks, parts), parts)
    loop = node == root
    _write_edges(_edges_path(work, 0, producer), node[~loop], root[~loop], parts, 0, both=True)   # last: done


# ---- 1, 2, ... contractions ---------------------------------------------------------------------------

def _large_star(part: int, work: Path, phase: int, producers: int, parts: int) -> int:
    """Every neighbour v > u of a node u is linked to m = min(u, neighbours of u) instead of u. Returns
    the rows that show the input is not yet stars: (u, v), v < u, where u has another neighbour."""
    node, other = _read_edges(work, phase - 1, producers, part)
    first, group = _groups_of(node)
    smallest = np.minimum(node[first], other[first])[group]        # rows are sorted: the first is the smallest
    degree = np.diff(np.append(first, len(node)))[group]
    unsettled = int(np.count_nonzero((other < node) & (degree > 1)))
    larger = other > node
    _write_edges(_edges_path(work, phase, part), other[larger], smallest[larger], parts, unsettled, both=False)
    return unsettled


def _small_star(part: int, work: Path, phase: int, producers: int, parts: int) -> int:
    """Rows (u, v), v < u: u and every smaller neighbour of u are linked to the smallest one, m.
    Returns the edges replaced."""
    node, other = _read_edges(work, phase - 1, producers, part)
    first, group = _groups_of(node)
    smallest = other[first]
    moved = other != smallest[group]
    changes = int(np.count_nonzero(moved))
    a = np.concatenate([other[moved], node[first]])
    b = np.concatenate([smallest[group][moved], smallest])
    _write_edges(_edges_path(work, phase, part), a, b, parts, changes, both=True)
    return changes


def _one_partition(work: Path, producers: int) -> int:
    """All edges fit one partition: their components at once, as stars in both directions."""
    node, other = _read_edges(work, 0, producers, 0)
    nodes, roots = linked_components(node, other)
    moved = nodes != roots
    _write_edges(_edges_path(work, 1, 0), nodes[moved], roots[moved], 1, 0, both=True)
    return 0


def _remove_edges(work: Path, phase: int, producers: int) -> None:
    for p in range(producers):
        _edges_path(work, phase, p).unlink(missing_ok=True)


def _run_phase(work: Path, phase: int, scatter: int, parts: int, stage: str, **par) -> int:
    """One contraction phase (resumable: work/components/phase-NNN.json records the sum of its tasks'
    counts). The files of the phase before the last are removed first: phase - 1 has its record, so
    nothing reads them any more, and at most two phases are on disk while this one runs."""
    producers = lambda phase: scatter if phase == 0 else parts      # noqa: E731 (files of a phase)
    if phase >= 2:
        _remove_edges(work, phase - 2, producers(phase - 2))
    record = work / "components" / f"phase-{phase:03d}.json"
    if not record.is_file():
        contract = _large_star if phase % 2 else _small_star
        todo = [p for p in range(parts) if not _edges_path(work, phase, p).is_file()]
        run_tasks(contract, [(p, work, phase, producers(phase - 1), parts) for p in todo],
                  desc=f"{stage}: components phase {phase}", **par)
        count = sum(_metadata_int(_edges_path(work, phase, p), "count") for p in range(parts))
        atomic_write_json(record, {"count": count})
    return read_json(record)["count"]


def link_components(work: Path, links: list[Path], memory_budget_mb: float, stage: str, **par) -> dict:
    """Stars of the components of the links in `links` (Arrow files with node, root, node_doc,
    root_doc); returns {partitions, rounds, scatter: the scatter
    tasks, final: the phase whose files hold the stars in both directions, producers: its files},
    also kept in work/components/result.json."""
    result = work / "components" / "result.json"
    if result.is_file():
        return read_json(result)
    n_links = sum(_rows(f) for f in links)
    parts = partition_count(2 * n_links, BYTES_PER_EDGE_ROW, memory_budget_mb)
    scatter = min(len(links), parts)
    todo = [g for g in range(scatter) if not _edges_path(work, 0, g).is_file()]
    run_tasks(_scatter_links, [(g, links[g * len(links) // scatter:(g + 1) * len(links) // scatter], work, parts)
                               for g in todo], desc=f"{stage}: components scatter", **par)
    if parts == 1:
        if not _edges_path(work, 1, 0).is_file():
            run_tasks(_one_partition, [(work, scatter)], desc=f"{stage}: components", **par)
        rounds, final = 1, 1
    else:
        rounds = 1
        while _run_phase(work, rounds, scatter, parts, stage, **par) or rounds % 2 == 0:
            rounds += 1
        final = rounds - 1          # a large-star phase found its input all stars (in both directions)
        _remove_edges(work, rounds, parts)      # that phase's own edges: nothing reads them (its count is recorded)
    atomic_write_json(result, {"partitions": parts, "rounds": rounds, "scatter": scatter, "final": final,
                               "producers": scatter if final == 0 else parts})
    return read_json(result)


# ---- clusters ------------------------------------------------------------------------------------------

def _members(part: int, work: Path, final: int, producers: int, scatter: int, first_docs: list[int],
             parts: int) -> None:
    """From the final stars of one partition: its leaves' documents, by partition of their root; its
    roots' documents, by input shard (for their ids)."""
    node, other = _read_edges(work, final, producers, part)
    batches = [read_partition(_docs_path(work, p), part) for p in range(scatter)]
    ranks, first = np.unique(np.concatenate([b.column("rank").to_numpy() for b in batches] + [np.zeros(0, np.int64)]),
                             return_index=True)
    docs = np.concatenate([b.column("doc").to_numpy() for b in batches] + [np.zeros(0, np.int64)])[first]
    doc_of = lambda r: docs[np.searchsorted(ranks, r)]        # noqa: E731
    roots = np.unique(node[node < other])
    root_docs = doc_of(roots)
    write_partitioned(work / "members" / f"roots-{part:05d}.arrow", MEMBER_SCHEMA, {"root": roots, "doc": root_docs},
                      np.searchsorted(np.asarray(first_docs, np.int64), root_docs, side="right") - 1, len(first_docs))
    leaf = node > other
    write_partitioned(work / "members" / f"leaves-{part:05d}.arrow", MEMBER_SCHEMA,     # last: marks the partition done
                      {"root": other[leaf], "doc": doc_of(node[leaf])}, hash_partition(other[leaf], parts), parts)


def _survivors(shard: Shard, work: Path, meta_dir: Path, parts: int) -> None:
    """Ids of the roots whose documents are in one input shard, by partition of the root."""
    batches = [read_partition(work / "members" / f"roots-{p:05d}.arrow", shard.index) for p in range(parts)]
    roots, docs = (np.concatenate([b.column(c).to_numpy() for b in batches] + [np.zeros(0, np.int64)])
                   for c in MEMBER_SCHEMA.names)
    ids = pa.array([], pa.string())
    if len(docs):           # a shard without survivors is not read
        ids = read_columns(meta_dir / f"{shard.name}.arrow", ["id"]).column("id")
        ids = ids.take(pa.array(docs - shard.first_doc)).combine_chunks()
    write_partitioned(work / "survivors" / f"{shard.name}.arrow", SURVIVOR_SCHEMA,
                      {"root": roots, "doc": docs, "id": ids}, hash_partition(roots, parts), parts)


def _groups(part: int, work: Path, names: list[str], parts: int, n_docs: int, ranges: int) -> int:
    """The whole clusters of one partition's roots: each root and its leaves (common.write_clusters)."""
    survivors = pa.Table.from_batches([read_partition(work / "survivors" / f"{n}.arrow", part) for n in names],
                                      schema=SURVIVOR_SCHEMA)
    leaves = pa.Table.from_batches([read_partition(work / "members" / f"leaves-{p:05d}.arrow", part)
                                    for p in range(parts)], schema=MEMBER_SCHEMA)
    by_root = survivors.sort_by("root")
    roots, root_docs = by_root.column("root").to_numpy(), by_root.column("doc").to_numpy()
    leaf_roots = leaves.column("root").to_numpy()
    of_leaf = np.searchsorted(roots, leaf_roots)
    ids = by_root.column("id").combine_chunks()
    return write_clusters(work / "groups" / f"part-{part:05d}.arrow",
                          np.concatenate([root_docs, leaves.column("doc").to_numpy()]),
                          np.concatenate([roots, leaf_roots]), np.concatenate([root_docs, root_docs[of_leaf]]),
                          pa.concat_arrays([ids, ids.take(pa.array(of_leaf, pa.int64()))]), n_docs, ranges)


def write_component_clusters(work: Path, shards: list[Shard], links: list[Path], meta_dir: Path, ranges: int,
                             memory_budget_mb: float, stage: str, **par) -> dict:
    """Components of the links (link_components), then their clusters numbered and written per input
    shard (common.write_decisions, `ranges` rank ranges); ids from meta_dir/<shard>.arrow. Returns
    link_components' result."""
    comp = link_components(work, links, memory_budget_mb, stage, **par)
    parts, names = comp["partitions"], [s.name for s in shards]
    todo = [p for p in range(parts) if not (work / "members" / f"leaves-{p:05d}.arrow").is_file()]
    run_tasks(_members, [(p, work, comp["final"], comp["producers"], comp["scatter"], [s.first_doc for s in shards],
                          parts) for p in todo], desc=f"{stage}: cluster members", **par)
    todo = [s for s in shards if not (work / "survivors" / f"{s.name}.arrow").is_file()]
    run_tasks(_survivors, [(s, work, meta_dir, parts) for s in todo], desc=f"{stage}: survivor ids", **par)
    groups = [work / "groups" / f"part-{p:05d}.arrow" for p in range(parts)]
    todo = [p for p in range(parts) if not groups[p].is_file()]
    n_docs = sum(s.rows for s in shards)
    run_tasks(_groups, [(p, work, names, parts, n_docs, ranges) for p in todo], desc=f"{stage}: clusters", **par)
    write_decisions(work, shards, groups, ranges, stage, **par)
    return comp
