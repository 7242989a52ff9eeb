"""Progress bars (rate and ETA) and one-line stage summaries, on stderr so stdout stays clean."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, smoothing=0.1, unit_scale=True)


def summary(stage: str, text: str) -> None:
    """The one line every stage ends with."""
    print(f"[{stage}] {text}", flush=True)
