"""Progress bars for long work: shown on a terminal, silent in pipes and CI logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str, enabled: bool = True) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar on stderr when enabled and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
