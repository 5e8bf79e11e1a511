"""The exception of a block that could not be read."""

from __future__ import annotations

from ..errors import RingcastError

__all__ = ["ReadError"]


class ReadError(RingcastError, RuntimeError):
    """A worker failed to read a block; the worker's traceback is in the message."""
