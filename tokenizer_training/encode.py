"""`encode`: Arrow shards to megatron-core indexed datasets, one output prefix per language or source.

    OUT/<group>_text_document.{bin,idx}   IndexedDatasetBuilder output: one document per sequence,
                                          </s> (eod) appended; read with megatron-core's IndexedDataset
    OUT/<group>_text_document.docs.parquet  id, source and lang of each document, in document order
                                          (row i describes document i of the .bin; provenance reads it)
    OUT/encode_summary.json               documents and tokens per output, tokenizer path + sha256,
                                          vocab size, eod / pad / bos ids, dtype (written last)

Work is split into units of about `encode.chunk_mb` of text (a row range of one record batch).
Worker processes encode units into OUT/parts/<unit>.<group>.{bin,idx} and mark each one done;
a rerun skips finished units (resumable), then the parts are concatenated in input order, so
the output does not depend on the number of workers.
"""
from __future__ import annotations

import gc
import json
import re
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sentencepiece as spm
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from stack_common.atomic import atomic_path, atomic_write_json, read_json, remove_stale_tmp, sha256_file
from stack_common.config import Checks
from stack_common.errors import UserError
from stack_common.logging import get_logger
from stack_common.progress import progress
from stack_common.shards import read_manifest
from stack_common.tasks import run_tasks

from .config import AppConfig, EncodeConfig, check_encode
from .export_hf import load_sentencepiece, read_pad_id
from .sources import resolve_inputs, shard_files

log = get_logger("tokenizer_training.encode")
PLAN = "encode_plan.json"
SUMMARY = "encode_summary.json"
PARTS = "parts"
SUFFIX = "_text_document"
DOCS = ".docs.parquet"                 # the document sidecar next to PREFIX.bin / PREFIX.idx
DOC_COLUMNS = ("id", "source", "lang")
DOCS_SCHEMA = pa.schema([(name, pa.string()) for name in DOC_COLUMNS])


@dataclass(frozen=True)
class Unit:
    """A row range of one record batch of one shard file."""
    index: int
    file: str
    batch: int
    start: int
    stop: int
    text_bytes: int


def group_name(value) -> str:
    """A file-name-safe output name for a language or source value."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value)).strip("._") if value else ""
    return name or "unknown"


def plan_units(files: Sequence[Path], chunk_bytes: int) -> list[Unit]:
    """Cut every record batch into row ranges of about `chunk_bytes` of text (lengths only are read)."""
    units: list[Unit] = []
    for path in files:
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_file(src)
            for b in range(reader.num_record_batches):
                sizes = pc.binary_length(reader.get_batch(b).column("text")).fill_null(0).to_numpy(zero_copy_only=False)
                start, acc = 0, 0
                for row, size in enumerate(sizes):
                    acc += int(size)
                    if acc >= chunk_bytes or row == len(sizes) - 1:
                        units.append(Unit(len(units), str(path), b, start, row + 1, acc))
                        start, acc = row + 1, 0
    return units


def plan_fingerprint(dirs: Sequence[Path], model_sha: str, enc: EncodeConfig) -> dict:
    """What the output depends on; a resumed run must match it exactly."""
    shards = [{"dir": str(d.resolve()), "files": [[f["name"], f["sha256"]] for f in read_manifest(d)["files"]]}
              for d in dirs]
    return {"tokenizer_sha256": model_sha, "group_by": enc.group_by, "chunk_mb": enc.chunk_mb,
            "append_eod": enc.append_eod, "shards": shards}


# ---------------------------------------------------------------- worker side
_worker: dict = {}


def _init_worker(model_path: str, group_by: str, append_eod: bool, dtype_code: int, parts_dir: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=model_path)
    _worker.update(sp=sp, newline_id=newline_byte_id(sp), group_by=group_by, append_eod=append_eod,
                   dtype=DType.dtype_from_code(dtype_code), parts=Path(parts_dir))


def newline_byte_id(sp: spm.SentencePieceProcessor) -> int | None:
    """The id "\n" always encodes to, when no piece contains a newline (SentencePiece trains on
    lines, so none does unless added by hand); None otherwise."""
    if any("\n" in sp.id_to_piece(i) for i in range(sp.get_piece_size())):
        return None
    ids = sp.encode("\n")
    return ids[0] if len(ids) == 1 else None


def newline_chunks(text: str, size: int = 1000) -> list[str]:
    """`text` cut at newlines into runs of about `size` characters (the newlines at cuts dropped)."""
    chunks, current, length = [], [], 0
    for line in text.split("\n"):
        if current and length + len(line) > size:
            chunks.append("\n".join(current))
            current, length = [], 0
        current.append(line)
        length += len(line) + 1
    chunks.append("\n".join(current))
    return chunks


def encode_texts(sp: spm.SentencePieceProcessor, texts: list[str], newline_id: int | None) -> list[list[int]]:
    """sp.encode of each text. When no piece holds a newline no merge crosses one, so a document
    is encoded in newline-bounded chunks of ~1000 characters joined by the newline id: the same
    ids, 1.3x faster on long English documents (SentencePiece slows down on very long inputs)."""
    if newline_id is None:
        return sp.encode(texts, num_threads=1)
    chunked = [newline_chunks(text) for text in texts]
    encoded = iter(sp.encode([chunk for doc in chunked for chunk in doc], num_threads=1))
    docs = []
    for doc in chunked:
        ids = list(next(encoded))
        for _ in range(len(doc) - 1):
            ids.append(newline_id)
            ids.extend(next(encoded))
        docs.append(ids)
    return docs


def read_unit(unit: Unit, group_by: str) -> tuple[list, list, list[dict]]:
    """(texts, group values, {id, source, lang} per row; None where the shards lack a column)."""
    with pa.memory_map(unit.file) as src:
        batch = pa.ipc.open_file(src).get_batch(unit.batch).slice(unit.start, unit.stop - unit.start)
        columns = {name: batch.column(name).cast(pa.string()).to_pylist() if name in batch.schema.names
                   else [None] * batch.num_rows for name in DOC_COLUMNS}
        docs = [dict(zip(DOC_COLUMNS, values)) for values in zip(*columns.values())]
        return batch.column("text").to_pylist(), batch.column(group_by).to_pylist(), docs


def docs_path(prefix: str | Path) -> Path:
    """The document sidecar of an indexed dataset prefix."""
    return Path(f"{prefix}{DOCS}")


def write_docs(prefix: Path, docs: list[dict]) -> None:
    with atomic_path(docs_path(prefix)) as tmp:
        pq.write_table(pa.Table.from_pylist(docs, schema=DOCS_SCHEMA), tmp)


def open_docs(prefix: str | Path, documents: int) -> pq.ParquetFile | None:
    """The sidecar of `prefix`, opened (None when the encode kept none; source and lang read as
    dictionaries); its rows must be the dataset's `documents`, else a UserError naming the file."""
    path = docs_path(prefix)
    if not path.is_file():
        return None
    expected = f"parquet with columns {', '.join(DOC_COLUMNS)}"
    try:
        sidecar = pq.ParquetFile(path, read_dictionary=["source", "lang"])
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"unreadable document sidecar: {str(err).splitlines()[0]}", file=path,
                        expected=expected) from None
    missing = [c for c in DOC_COLUMNS if c not in sidecar.schema_arrow.names]
    if missing:
        raise UserError(f"document sidecar lacks columns {missing}", file=path, expected=expected)
    if sidecar.metadata.num_rows != documents:
        raise UserError(f"document sidecar has {sidecar.metadata.num_rows} rows for {documents} documents "
                        "in the dataset", file=path, expected="the sidecar written with this .bin/.idx")
    return sidecar


def read_docs(prefix: str | Path, documents: int, columns=DOC_COLUMNS) -> pa.Table | None:
    """`columns` of the sidecar of `prefix` (see open_docs)."""
    sidecar = open_docs(prefix, documents)
    return sidecar.read(columns=list(columns)) if sidecar is not None else None


def dataset_files(prefix: Path) -> tuple[Path, Path]:
    """(.idx, .bin) paths of an indexed dataset prefix (names may contain dots)."""
    return Path(f"{prefix}.idx"), Path(f"{prefix}.bin")


def write_part(prefix: Path, docs: list[list[int]], eod: int | None, dtype) -> int:
    """One indexed dataset with one sequence per document; returns its token count."""
    tokens = 0
    idx_path, bin_path = dataset_files(prefix)
    with atomic_path(idx_path) as idx_tmp, atomic_path(bin_path) as bin_tmp:  # .bin is renamed first
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for ids in docs:
            if eod is not None:
                ids.append(eod)
            builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
            tokens += len(ids)
        builder.finalize(str(idx_tmp))
    return tokens


def encode_unit(unit: Unit) -> dict:
    """Encode one unit into per-group parts, then write its done marker (written last)."""
    sp, parts = _worker["sp"], _worker["parts"]
    texts, groups, metas = read_unit(unit, _worker["group_by"])
    by_group: dict[str, list[str]] = defaultdict(list)
    docs_by_group: dict[str, list[dict]] = defaultdict(list)
    skipped = {"null_text": 0, "empty_text": 0}
    for text, group, meta in zip(texts, groups, metas):
        if text is None or text == "":
            skipped["null_text" if text is None else "empty_text"] += 1
            continue
        by_group[group_name(group)].append(text)
        docs_by_group[group_name(group)].append(meta)
    counts = {}
    eod = sp.eos_id() if _worker["append_eod"] else None
    for group, docs in sorted(by_group.items()):
        ids = encode_texts(sp, docs, _worker["newline_id"])
        tokens = write_part(parts / f"{unit.index:07d}.{group}", ids, eod, _worker["dtype"])
        write_docs(parts / f"{unit.index:07d}.{group}", docs_by_group[group])
        counts[group] = {"documents": len(docs), "tokens": tokens}
    marker = {"unit": asdict(unit), "groups": counts, "skipped": skipped}
    atomic_write_json(parts / f"{unit.index:07d}.done.json", marker)
    return marker


# ---------------------------------------------------------------- parent side
def load_done(parts: Path, units: Sequence[Unit]) -> dict[int, dict]:
    done = {}
    for unit in units:
        marker = parts / f"{unit.index:07d}.done.json"
        if marker.is_file():
            record = read_json(marker)
            sidecars = all(docs_path(parts / f"{unit.index:07d}.{g}").is_file() for g in record["groups"])
            if record["unit"] == asdict(unit) and sidecars:   # parts of an older encode have none: redone
                done[unit.index] = record
    return done


def run_units(pending: Sequence[Unit], model_path: Path, enc: EncodeConfig, dtype, parts: Path) -> list[dict]:
    init = (str(model_path), enc.group_by, enc.append_eod, DType.code_from_dtype(dtype), str(parts))
    return run_tasks(encode_unit, [(u,) for u in pending], workers=enc.workers, desc="encode", unit="B",
                     weights=[u.text_bytes for u in pending], initializer=_init_worker, initargs=init)


def merge_group(out: Path, group: str, units: Sequence[Unit], parts: Path, dtype) -> None:
    """Concatenate a group's parts, in unit order, into OUT/<group>_text_document.{bin,idx} and
    its document sidecar (one row group per part)."""
    idx_path, bin_path = dataset_files(out / f"{group}{SUFFIX}")
    with atomic_path(idx_path) as idx_tmp, atomic_path(bin_path) as bin_tmp, \
            atomic_path(docs_path(out / f"{group}{SUFFIX}")) as docs_tmp, \
            pq.ParquetWriter(docs_tmp, DOCS_SCHEMA) as docs:
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for unit in units:
            listed = read_json(parts / f"{unit.index:07d}.done.json")["groups"]
            if group not in listed:
                continue  # this unit has no document of the group
            part = parts / f"{unit.index:07d}.{group}"
            if not all(p.is_file() for p in dataset_files(part)):
                raise UserError(f"part of output '{group}' is missing although its unit is marked done; "
                                "delete the .done.json marker next to it and rerun to redo the unit",
                                file=dataset_files(part)[0])
            builder.add_index(str(part))
            docs.write_table(pq.read_table(docs_path(part)))
        builder.finalize(str(idx_tmp))


def prepare_out(out: Path, fingerprint: dict, overwrite: bool) -> bool:
    """Start fresh, or resume only an encode of the same inputs, tokenizer and settings.
    Returns True when `out` already holds this encode, complete."""
    plan = out / PLAN
    if out.exists() and any(out.iterdir()) and not plan.is_file():
        raise UserError("output directory is not empty and holds no encode plan; choose a new directory", file=out)
    if plan.is_file() and read_json(plan) != fingerprint:
        if not overwrite:
            raise UserError("output directory holds an encode of other inputs, tokenizer or settings "
                            "(pass overwrite=true to replace it, or choose a new directory)", file=out)
        shutil.rmtree(out)
    if plan.is_file() and (out / SUMMARY).is_file():
        if not overwrite:
            return True
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    remove_stale_tmp(out / PARTS)
    remove_stale_tmp(out)
    atomic_write_json(plan, fingerprint)
    return False


def summarize(records: Sequence[dict], out: Path, model_path: Path, model_sha: str, sp, pad_id: int,
              dtype, enc: EncodeConfig, dirs, resumed: int, seconds: float) -> dict:
    outputs: dict[str, dict] = {}
    skipped = {"null_text": 0, "empty_text": 0}
    for record in records:
        for group, c in record["groups"].items():
            o = outputs.setdefault(group, {"prefix": f"{group}{SUFFIX}", "documents": 0, "tokens": 0})
            o["documents"] += c["documents"]
            o["tokens"] += c["tokens"]
        for k, v in record["skipped"].items():
            skipped[k] += v
    text_bytes = sum(r["unit"]["text_bytes"] for r in records)
    for group, o in outputs.items():
        o["path_prefix"] = str((out / o["prefix"]).resolve())
        o["bin_bytes"] = dataset_files(out / o["prefix"])[1].stat().st_size
        o["documents_file"] = docs_path(o["prefix"]).name
    return {
        "tokenizer": {"model": str(model_path.resolve()), "sha256": model_sha, "vocab_size": sp.get_piece_size(),
                      "eod_id": sp.eos_id(), "pad_id": pad_id, "bos_id": sp.bos_id(), "unk_id": sp.unk_id()},
        "group_by": enc.group_by, "append_eod": enc.append_eod, "dtype": np.dtype(dtype).name,
        "outputs": dict(sorted(outputs.items())),
        "documents": sum(o["documents"] for o in outputs.values()),
        "tokens": sum(o["tokens"] for o in outputs.values()), "text_bytes": text_bytes, "skipped": skipped,
        "inputs": [str(d) for d in dirs], "units": len(records), "units_resumed": resumed,
        "workers": enc.workers, "seconds": round(seconds, 2),
    }


def encode(model_path: str | Path, inputs: Sequence[str], out: str | Path, enc: EncodeConfig,
           overwrite: bool = False) -> dict:
    """Encode the shard dirs `inputs` with the SentencePiece model into `out`; returns the summary."""
    checks = Checks()
    check_encode(enc, checks)
    checks.raise_if_any()
    model_path, out = Path(model_path), Path(out)
    sp = load_sentencepiece(model_path)
    dirs = resolve_inputs(inputs)
    files = shard_files(dirs, ["text", enc.group_by])
    model_sha = sha256_file(model_path)
    if prepare_out(out, plan_fingerprint(dirs, model_sha, enc), overwrite):
        log.info("%s is already complete", out)
        return read_json(out / SUMMARY)
    started = time.perf_counter()
    dtype = DType.optimal_dtype(sp.get_piece_size())
    units = plan_units(files, int(enc.chunk_mb * 1e6))
    parts = out / PARTS
    done = load_done(parts, units)
    if done:
        log.info("resuming: %d of %d units already encoded", len(done), len(units))
    fresh = run_units([u for u in units if u.index not in done], model_path, enc, dtype, parts)
    records = sorted([*done.values(), *fresh], key=lambda r: r["unit"]["index"])
    groups = sorted({g for r in records for g in r["groups"]})
    gc.freeze()  # add_index runs gc.collect() per part; frozen objects make that cheap
    try:
        for group in progress(groups, desc="merge", unit="output"):
            merge_group(out, group, units, parts, dtype)
    finally:
        gc.unfreeze()
    seconds = time.perf_counter() - started
    summary = summarize(records, out, model_path, model_sha, sp, read_pad_id(model_path), dtype, enc, dirs,
                        len(done), seconds)
    atomic_write_json(out / SUMMARY, summary)
    shutil.rmtree(parts, ignore_errors=True)
    log.info("wrote %d outputs to %s: %d documents, %d tokens, %.1f MB text at %.2f MB/s", len(groups), out,
             summary["documents"], summary["tokens"], summary["text_bytes"] / 1e6,
             summary["text_bytes"] / 1e6 / max(seconds, 1e-9))
    return summary


def blend_from_summary(encode_dir: str | Path, weights: dict[str, float] | None = None) -> tuple[list[str], list[float]]:
    """megatron-core `blend` (path prefixes, weights) for the outputs of one encode; weights
    default to each output's token count (natural proportions)."""
    summary = read_json(Path(encode_dir) / SUMMARY)
    outputs = summary["outputs"]
    if weights is not None:
        unknown = sorted(set(weights) - set(outputs))
        if unknown:
            raise UserError(f"blend names outputs {unknown} that the encode did not write", file=encode_dir,
                            expected=", ".join(outputs))
    names = sorted(weights) if weights is not None else sorted(outputs)
    return ([outputs[n]["path_prefix"] for n in names],
            [float(weights[n]) if weights is not None else float(outputs[n]["tokens"]) for n in names])


def encode_command(cfg: AppConfig) -> None:
    if cfg.model_file is None or cfg.out is None:
        raise UserError("encode needs model_file=PATH/tokenizer.model, input=[SHARD_DIR,...] and out=DIR")
    encode(cfg.model_file, cfg.input, cfg.out, cfg.encode, overwrite=cfg.overwrite)
    print(json.dumps({k: v for k, v in read_json(Path(cfg.out) / SUMMARY).items() if k in ("outputs", "tokens")},
                     indent=1))
