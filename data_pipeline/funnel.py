"""The funnel chart of a run: documents and bytes left after each stage."""
from __future__ import annotations

from pathlib import Path

from stack_common.atomic import atomic_path


def plot_funnel(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["read"] + [s["stage"] for s in stats["stages"]]
    docs = [stats["records_read"]] + [s["docs_out"] for s in stats["stages"]]
    mbytes = [stats["bytes_read"] / 1e6] + [s["bytes_out"] / 1e6 for s in stats["stages"]]
    removed = [stats["quarantined"]] + [sum(s["excluded"].values()) for s in stats["stages"]]
    fig, (ax_docs, ax_bytes) = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 1.5), sharey=True)
    ys = list(range(len(names)))[::-1]
    ax_docs.barh(ys, docs, color="#4c72b0")
    for y, d, r in zip(ys, docs, removed):
        ax_docs.text(d, y, f" {d:,} (-{r:,})", va="center", fontsize=8)
    ax_docs.set_xlim(0, max(docs) * 1.3 or 1)
    ax_docs.set_yticks(ys, names)
    ax_docs.set_xlabel("documents (removed at this stage)")
    ax_bytes.barh(ys, mbytes, color="#55a868")
    for y, m in zip(ys, mbytes):
        ax_bytes.text(m, y, f" {m:.2f} MB", va="center", fontsize=8)
    ax_bytes.set_xlim(0, max(mbytes) * 1.25 or 1)
    ax_bytes.set_xlabel("text MB")
    fig.suptitle(f"data pipeline funnel: {stats['records_read']:,} records -> {stats['docs_kept']:,} kept, "
                 f"{stats['quarantined']:,} quarantined")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
