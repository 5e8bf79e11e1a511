"""Helpers on iterables (paipa's ``paipa.iterables``): ``consume``, ``chunk``, ``flatten``."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from ..errors import InvalidArgument

__all__ = ["consume", "chunk", "flatten", "recursive_flatten", "is_iterable"]


def flatten(gen: Iterable[Iterable[Any]]) -> Iterator[Any]:
    """Flatten one level: ``flatten([(1, 2), [3]])`` yields 1, 2, 3."""
    return itertools.chain.from_iterable(gen)


def is_iterable(testee: Any) -> bool:
    """True if ``iter(testee)`` works (strings are iterable too)."""
    try:
        iter(testee)
    except TypeError:
        return False
    return True


def recursive_flatten(elements: Iterable[Any]) -> Iterator[Any]:
    """Flatten nested iterables at any depth; ``str`` and ``bytes`` are not descended into."""
    for element in elements:
        if is_iterable(element) and not isinstance(element, (str, bytes, bytearray)):
            yield from recursive_flatten(element)
        else:
            yield element


def chunk(chunk_size: int = 32) -> Callable[[Iterable[Any]], Iterator[list]]:
    """A coroutine-pipeline step yielding lists of ``chunk_size`` items (the last may be shorter).

    >>> list(chunk(3)([1, 2, 3, 4, 5, 6, 7, 8]))
    [[1, 2, 3], [4, 5, 6], [7, 8]]
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise InvalidArgument(f"chunk_size must be an int, got {chunk_size!r}")
    if chunk_size < 1:
        raise InvalidArgument(f"chunk_size can not be less than 1, got {chunk_size}")

    def chunker(gen: Iterable[Any]) -> Iterator[list]:
        it = iter(gen)
        while True:
            block = list(itertools.islice(it, chunk_size))
            if not block:
                return
            yield block

    return chunker


def consume(iterator: Iterable[Any], n: Optional[int] = None) -> None:
    """Advance ``iterator`` by ``n`` items, or exhaust it when ``n`` is None."""
    if n is None:
        deque(iterator, maxlen=0)
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgument(f"consume(): n must be None or an int >= 0, got {n!r}")
    next(itertools.islice(iterator, n, n), None)
