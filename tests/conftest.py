"""Shared fixtures: unique segment names, and a leak check after every test.

Every test must leave ``/dev/shm`` as it found it: a test after which a new entry remains
fails (and the entry is removed so the next test starts clean).
"""

from __future__ import annotations

import itertools
import os
import time

import pytest

_counter = itertools.count()


def _shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")}
    except FileNotFoundError:
        return set()


@pytest.fixture
def shm_name() -> str:
    """A segment name unique to this test."""
    return f"rc-t-{os.getpid()}-{next(_counter)}"


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = _shm_entries()
    yield
    deadline = time.monotonic() + 2.0
    leaked = _shm_entries() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked = _shm_entries() - before
    for name in leaked:
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass
    assert not leaked, f"test left shared-memory entries behind: {sorted(leaked)}"


def pytest_sessionfinish(session, exitstatus):
    mine = [n for n in _shm_entries() if n.startswith(f"rc-t-{os.getpid()}-")]
    if mine:
        session.exitstatus = 1
        print(f"\nleft in /dev/shm after the suite: {mine}")
