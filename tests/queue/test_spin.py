"""The spin before sleeping never costs more than it saves (issue 12, item 12).

A waiting receive spins before it sleeps on the futex. Where the spin rarely succeeds (the
message comes later than the spin lasts, or a busy neighbour has the other core), a fixed
spin burns CPU that the writer needs; the spin is adaptive (``wait.rs``): each thread halves
it after a spin that did not succeed, and nobody spins while more threads are runnable than
the machine has CPUs. The figures (ping-pong, throughput, with a CPU-bound neighbour) are in
``benches/`` and ``docs/performance.md``.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

import ringcast

FORK = mp.get_context("fork")
N = 150
GAP_S = 0.004
SPIN_US = 2000.0


def _reader(name, out):
    q = ringcast.BroadcastQueue(name, create=False, spin_us=SPIN_US)
    r = q.reader()
    out.put("ready")
    try:
        cpu0 = time.thread_time()
        for i in range(N):
            m = r.recv(timeout=10)
            assert int(m.body) == i
        out.put(("cpu", time.thread_time() - cpu0))
    except BaseException as e:
        out.put(("error", repr(e)))
        raise
    finally:
        r.close()
        q.close()


@pytest.mark.timeout(60)
def test_a_spin_that_never_succeeds_stops_costing_cpu(shm_name):
    """Messages every 4 ms, a reader asking to spin 2 ms: a fixed spin spent half the
    reader's wall time spinning (about 0.3 s of CPU for 150 messages); the adaptive spin
    stops after a few failures and probes briefly now and then."""
    q = ringcast.BroadcastQueue(shm_name, create=True, capacity=1 << 16)
    out = FORK.Queue()
    p = FORK.Process(target=_reader, args=(shm_name, out), daemon=True)
    p.start()
    try:
        assert out.get(timeout=15) == "ready"
        time.sleep(0.05)
        for i in range(N):
            time.sleep(GAP_S)
            q.send(str(i).encode())
        tag, cpu = out.get(timeout=30)
        assert tag == "cpu", cpu
        fixed = N * SPIN_US / 1e6
        assert cpu < fixed / 4, f"{cpu:.3f} s of CPU (a fixed spin: about {fixed:.2f} s)"
    finally:
        p.join(15)
        if p.is_alive():
            p.kill()
            p.join(5)
        q.close()
    assert p.exitcode == 0
