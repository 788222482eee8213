"""Progress bars for long loops: tqdm on a terminal, periodic log lines otherwise (CI, files)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None) -> "tqdm[T]":
    """A tqdm bar that stays quiet when BC_NO_PROGRESS=1 and redraws rarely when not on a tty."""
    if disable is None:
        disable = os.environ.get("BC_NO_PROGRESS") == "1"
    on_tty = sys.stderr.isatty()
    return tqdm(items, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                mininterval=0.2 if on_tty else 10.0, file=sys.stderr)


def iterate(items: Iterable[T], **kwargs) -> Iterator[T]:
    yield from progress(items, **kwargs)
