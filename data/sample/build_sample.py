"""Provenance script: how data/sample/*.parquet were cut from the shared corpus.

Run once by the maintainers (it needs ../shared/corpus, which users do not have);
the outputs are committed. See SOURCES.md for the licence of each source.
"""
import random
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CORPUS = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "corpus")

# (file, lang, char budget, chunk size in chars or None to keep documents whole)
PLAN = [
    ("shakespeare", "en", 420_000, 4_000),
    ("python-doc", "en", 300_000, 6_000),
    ("gnome-help-en", "en", 160_000, None),
    ("fortunes-zh", "zh", 150_000, None),
    ("manpages-zh", "zh", 110_000, None),
    ("gnome-help-zh", "zh", 90_000, None),
    ("debian-handbook-zh", "zh", 120_000, 3_000),
]
CODE_FILES = ["argparse.py", "textwrap.py", "heapq.py", "bisect.py", "shlex.py", "difflib.py",
              "fractions.py", "statistics.py", "functools.py", "string.py", "json/decoder.py",
              "json/encoder.py", "csv.py", "queue.py", "sched.py"]


def chunks(text, size):
    paras = text.split("\n\n")
    cur = []
    n = 0
    for p in paras:
        cur.append(p)
        n += len(p) + 2
        if n >= size:
            yield "\n\n".join(cur)
            cur, n = [], 0
    if cur:
        yield "\n\n".join(cur)


def cut(name, lang, budget, chunk):
    rows = pq.read_table(CORPUS / f"{name}.parquet").to_pylist()
    random.Random(name).shuffle(rows)
    out, used = [], 0
    for r in rows:
        pieces = list(chunks(r["text"], chunk)) if chunk else [r["text"]]
        for i, t in enumerate(pieces):
            if used >= budget:
                return out
            if len(t.strip()) < 40:
                continue
            out.append({"id": f"{r['id']}#{i}" if chunk else r["id"], "source": name, "lang": lang, "text": t})
            used += len(t)
    return out


def main():
    by_lang = {"en": [], "zh": [], "code": []}
    for name, lang, budget, chunk in PLAN:
        by_lang[lang] += cut(name, lang, budget, chunk)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in CODE_FILES:
        by_lang["code"].append({"id": f"cpython-stdlib/{f}", "source": "cpython-stdlib", "lang": "code",
                                "text": (stdlib / f).read_text(encoding="utf-8")})
    for lang, rows in by_lang.items():
        pq.write_table(pa.Table.from_pylist(rows), HERE / f"{lang}.parquet", compression="zstd",
                       compression_level=19)
        print(lang, len(rows), "docs", sum(len(r["text"]) for r in rows), "chars")


if __name__ == "__main__":
    main()
