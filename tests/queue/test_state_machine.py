"""A hypothesis state machine: the broadcast queue against a small pure-Python model.

Model: each reader has the list of every message sent since it joined (screened or not);
receiving skips screened messages (consuming them) and returns the first accepted one. The
ring is full when the largest reader backlog (in record bytes) plus the new record exceeds
the capacity; a message larger than the capacity never fits.
"""

from __future__ import annotations

import itertools
import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

import ringcast
from ringcast import BroadcastQueue, record_size

_names = itertools.count()
SENDERS = ["a", "b", "c"]
TYPES = ["", "x", "y"]


class QueueModel(RuleBasedStateMachine):
    readers = Bundle("readers")

    def __init__(self) -> None:
        super().__init__()
        self.capacity = 0
        self.q: BroadcastQueue = None  # type: ignore[assignment]  # set by create()
        self.model: dict[int, list] = {}
        self.handles: dict[int, ringcast.Reader] = {}
        self.filters: dict[int, tuple] = {}
        self.ids = itertools.count()
        self.seq = 0

    @precondition(lambda self: self.q is None)
    @rule(capacity=st.integers(16, 3000))  # 16: the smallest capacity (one empty record)
    def create(self, capacity):
        self.capacity = capacity
        name = f"rc-t-{os.getpid()}-sm{next(_names)}"
        self.q = BroadcastQueue(name, create=True, capacity=capacity, max_members=6)

    @precondition(lambda self: self.q is not None and len(self.handles) < 5)
    @rule(
        target=readers,
        types=st.none() | st.sets(st.sampled_from(TYPES), max_size=2),
        exclude=st.sets(st.sampled_from(SENDERS), max_size=2),
    )
    def add_reader(self, types, exclude):
        k = next(self.ids)
        self.handles[k] = self.q.reader(types=types, exclude_senders=exclude)
        self.filters[k] = (types, exclude)
        self.model[k] = []
        return k

    def _accepts(self, k, sender, typ):
        types, exclude = self.filters[k]
        return (types is None or typ in types) and sender not in exclude

    @precondition(lambda self: self.q is not None)
    @rule(
        sender=st.sampled_from(SENDERS),
        typ=st.sampled_from(TYPES),
        size=st.integers(0, 700),
    )
    def send(self, sender, typ, size):
        n = record_size(size, len(typ), len(sender))
        used = max((sum(m[3] for m in backlog) for backlog in self.model.values()), default=0)
        body = bytes([self.seq % 251]) * size
        if n > self.capacity:
            try:
                self.q.send(body, typ, timeout=None, sender=sender)
            except ringcast.MessageTooLarge as e:
                assert e.needed == n
            else:
                raise AssertionError("a message larger than the queue was accepted")
        elif used + n > self.capacity:
            try:
                self.q.send(body, typ, timeout=0, sender=sender)
            except ringcast.Full as e:
                assert (e.needed, e.free) == (n, self.capacity - used)
            else:
                raise AssertionError("the queue accepted a message it has no room for")
        else:
            assert self.q.send(body, typ, timeout=0, sender=sender) == self.seq
            for backlog in self.model.values():
                backlog.append((sender, typ, body, n, self.seq))
            self.seq += 1

    @rule(k=readers)
    def recv(self, k):
        if k not in self.handles:
            return
        backlog = self.model[k]
        expected = None
        while backlog:
            s, t, b, _n, seq = backlog.pop(0)
            if self._accepts(k, s, t):
                expected = (s, t, b, seq)
                break
        try:
            m = self.handles[k].recv_nowait()
        except ringcast.Empty:
            assert expected is None, f"expected {expected}"
        else:
            assert (m.sender, m.type, m.body, m.seq) == expected

    @rule(k=readers)
    def close_reader(self, k):
        if k in self.handles:
            self.handles.pop(k).close()
            del self.model[k]

    @invariant()
    def stats_agree(self):
        if self.q is None:
            return
        s = self.q.stats()
        assert s["write_seq"] == self.seq
        assert s["readers_alive"] == len(self.handles)
        assert s["used_bytes"] <= self.capacity

    def teardown(self):
        for r in self.handles.values():
            r.close()
        if self.q is not None:
            self.q.close()


QueueModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueModel.TestCase
