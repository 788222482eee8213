"""inspect: every checkpoint of a run with progress, layout, model config, size and health."""
from __future__ import annotations

import json
from pathlib import Path

from stack_common.atomic import is_tmp_name
from stack_common.errors import UserError

from .dist_reader import META, DistCheckpointReader, read_json_file
from .export import MegatronCheckpoint


def checkpoints_dir(run_dir: Path) -> Path:
    """RUN_DIR/checkpoints, or the directory itself when it already holds iter_* entries."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("run directory does not exist", file=run_dir)
    root = run_dir / "checkpoints"
    if root.is_dir():
        return root
    if any(run_dir.glob("iter_*")):
        return run_dir
    raise UserError("no checkpoints/ directory", file=run_dir, expected="RUN_DIR/checkpoints/iter_*")


def describe(ckpt_dir: Path, deep: bool = True) -> dict:
    """One row: progress, layout, config, size; `status` is ok / incomplete / broken."""
    row = {"name": ckpt_dir.name, "path": str(ckpt_dir), "iteration": None, "consumed_tokens": None,
           "consumed_samples": None, "tp": None, "pp": None, "vpp": None, "dp": None, "keep": None,
           "size_bytes": dir_size(ckpt_dir), "model": None, "status": "ok", "problem": None}
    if is_tmp_name(ckpt_dir.name):
        row.update(status="incomplete", problem="temporary directory left by an interrupted save")
        return row
    try:
        if (ckpt_dir / META).is_file():
            meta = read_json_file(ckpt_dir / META)
            row.update({k: meta.get(k) for k in ("iteration", "consumed_tokens", "consumed_samples",
                                                 "tp", "pp", "vpp", "dp", "keep")})
            row["model"] = meta.get("model")
        if deep:
            MegatronCheckpoint(ckpt_dir)      # index readable, files present and long enough, shapes match
        else:
            DistCheckpointReader(ckpt_dir)
    except UserError as err:
        row["status"] = "incomplete" if "incomplete" in err.problem else "broken"
        row["problem"] = err.one_line()
    return row


def inspect_run(run_dir: str | Path) -> dict:
    root = checkpoints_dir(Path(run_dir))
    entries = sorted(p for p in root.iterdir() if p.is_dir() and (p.name.startswith("iter_")
                                                                   or is_tmp_name(p.name)))
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
    rows = [describe(p) for p in entries]
    for row in rows:
        row["latest"] = row["name"] == latest
    return {"run_dir": str(run_dir), "checkpoints_dir": str(root), "latest": latest, "checkpoints": rows}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_tokens(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(report: dict) -> str:
    header = ["checkpoint", "iter", "tokens", "layout", "model", "size", "status"]
    lines = []
    for r in report["checkpoints"]:
        m = r["model"] or {}
        model = (f"L{m.get('num_layers')} H{m.get('hidden_size')} A{m.get('num_attention_heads')} "
                 f"{m.get('position_embedding_type', '')}").strip() if m else "-"
        layout = f"tp{r['tp']} pp{r['pp']}" + (f" vpp{r['vpp']}" if r["vpp"] else "") + \
            f" dp{r['dp']}" if r["tp"] else "-"
        status = r["status"] + (" (latest)" if r.get("latest") else "") + (" kept" if r.get("keep") else "")
        lines.append([r["name"], str(r["iteration"] if r["iteration"] is not None else "-"),
                      human_tokens(r["consumed_tokens"]), layout, model, human_bytes(r["size_bytes"]), status])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    for r in report["checkpoints"]:
        if r["problem"]:
            out.append(f"{r['name']}: {r['problem']}")
    return "\n".join(out)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str)
