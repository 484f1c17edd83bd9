"""What a run leaves behind, for the tests that a C path frees what it makes."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

__all__ = ["Growth", "growth"]

T = TypeVar("T")


class Growth(NamedTuple):
    """After a collection: each watched object's extra references, the collector's extra
    objects and the extra bytes ``tracemalloc`` traces; and what the run returned."""

    references: list[int]
    objects: int
    traced_bytes: int
    result: object


def growth(run: Callable[[], T], watched: Sequence[object]) -> Growth:
    """Run ``run`` (warmed up beforehand by the caller) and measure what stays."""
    gc.collect()
    references = [sys.getrefcount(item) for item in watched]
    objects = len(gc.get_objects())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = run()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    now = [sys.getrefcount(item) for item in watched]  # counted as before: same references
    return Growth(
        [count - earlier for count, earlier in zip(now, references, strict=True)],
        len(gc.get_objects()) - objects,
        after - before,
        result,
    )
