"""Progress display for long pipeline runs: tqdm when it is installed, a plain line otherwise.

tqdm is an optional extra (``pip install tqdm``); it is imported only when a pipeline is created
with ``progress=True`` and starts running.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

__all__ = ["make_progress", "Progress"]


class Progress:
    """Interface of a progress display: ``update(done, postfix)`` and ``close(done, postfix)``."""

    def update(self, done: int, postfix: str = "") -> None:  # pragma: no cover - interface
        """Show that ``done`` items left the pipeline so far."""

    def close(self, done: int, postfix: str = "") -> None:  # pragma: no cover - interface
        """Show the final count and release the display."""


class _TqdmProgress(Progress):
    def __init__(self, tqdm_cls: Any, total: Optional[int], desc: str, file: TextIO) -> None:
        self._bar = tqdm_cls(total=total, desc=desc, unit="item", file=file, leave=True)
        self._shown = 0

    def update(self, done: int, postfix: str = "") -> None:
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        if done > self._shown:
            self._bar.update(done - self._shown)
            self._shown = done

    def close(self, done: int, postfix: str = "") -> None:
        self.update(done, postfix)
        self._bar.close()


class _PlainProgress(Progress):
    """One line, rewritten in place at most once a second: ``desc: N items (R items/s)``."""

    def __init__(self, total: Optional[int], desc: str, file: TextIO) -> None:
        self._total = total
        self._desc = desc
        self._file = file
        self._start = time.monotonic()
        self._last = 0.0

    def _line(self, done: int, postfix: str) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        of = f"/{self._total}" if self._total is not None else ""
        extra = f" [{postfix}]" if postfix else ""
        return f"\r{self._desc}: {done}{of} items ({done / elapsed:.0f} items/s){extra}"

    def update(self, done: int, postfix: str = "") -> None:
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            self._file.write(self._line(done, postfix))
            self._file.flush()

    def close(self, done: int, postfix: str = "") -> None:
        self._file.write(self._line(done, postfix) + "\n")
        self._file.flush()


def make_progress(total: Optional[int], desc: str, file: Optional[TextIO] = None) -> Progress:
    """A tqdm bar if tqdm can be imported, else a plain text line; both write to ``file``."""
    out = sys.stderr if file is None else file
    try:
        from tqdm import tqdm  # optional dependency, imported lazily
    except ImportError:
        return _PlainProgress(total, desc, out)
    # The pipeline refreshes the bar itself; tqdm's monitor thread (which would outlive the
    # run) is not needed. A subclass turns it off without touching tqdm's global settings.
    quiet_tqdm = type("RingcastTqdm", (tqdm,), {"monitor_interval": 0})
    return _TqdmProgress(quiet_tqdm, total, desc, out)
