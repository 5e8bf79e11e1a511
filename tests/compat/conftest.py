"""The ``res`` fixture of the pysyncq compatibility tests: the queues and processes of one
test, cleaned up whatever happens."""

from __future__ import annotations

import pytest

from ringcast import pysyncq as pq


class Resources:
    """Queues and processes of one test, cleaned up whatever happens."""

    def __init__(self):
        self.queues = []
        self.procs = []

    def q(self, *args, **kwargs):
        q = pq.PySyncQ(*args, **kwargs)
        self.queues.append(q)
        return q

    def start(self, ctx, target, *args):
        p = ctx.Process(target=target, args=args, daemon=True)
        self.procs.append(p)
        p.start()
        return p


@pytest.fixture
def res():
    r = Resources()
    yield r
    for p in r.procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    for q in reversed(r.queues):
        q.close()
