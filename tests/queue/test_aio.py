"""asyncio: recv_async, lease_async, async for; never blocking the loop; cancellation."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import pytest

import ringcast
from ringcast import BroadcastQueue


def _send_later(name: str, n: int, delay: float) -> None:
    q = BroadcastQueue(name, create=False)
    time.sleep(delay)
    for i in range(n):
        q.send(i.to_bytes(4, "little"))
    q.shutdown()
    q.close()


def test_recv_async_does_not_block_the_loop(shm_name):
    ctx = mp.get_context("fork")

    async def main(q: BroadcastQueue, r: ringcast.Reader) -> tuple[int, list[int]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        p = ctx.Process(target=_send_later, args=(q.name, 50, 0.3))
        p.start()
        got = [int.from_bytes((await r.recv_async(timeout=10)).body, "little")]
        got += [int.from_bytes(m.body, "little") async for m in r]
        t.cancel()
        p.join(10)
        return ticks, got

    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        ticks, got = asyncio.run(asyncio.wait_for(main(q, r), 30))
    assert got == list(range(50))
    assert ticks >= 15, f"the loop ran only {ticks} ticks while waiting 0.3 s"


def test_cancelling_a_pending_recv_loses_nothing(shm_name):
    async def main(q: BroadcastQueue, r: ringcast.Reader) -> None:
        for _ in range(5):
            task = asyncio.create_task(r.recv_async())
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        q.send(b"kept")
        await asyncio.sleep(0.3)  # the cancelled waits' threads finish their slice
        m = await asyncio.wait_for(r.recv_async(), 5)
        assert (m.seq, m.body) == (0, b"kept")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r.recv_async(), 0.05)
        with pytest.raises(ringcast.Empty):
            await r.recv_async(timeout=0.05)

    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        asyncio.run(main(q, r))


def test_lease_async(shm_name):
    async def main(q: BroadcastQueue, r: ringcast.Reader) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            q.send(b"leased")

        asyncio.get_running_loop().create_task(later())
        async with r.lease_async(timeout=5) as m:
            assert bytes(m.body) == b"leased"
        assert m.released
        q.send(b"again")
        m2 = await r.lease_async(timeout=5)
        assert bytes(memoryview(m2)) == b"again"
        m2.release()
        with pytest.raises(ringcast.Empty):
            async with r.lease_async(timeout=0.05):
                pass

    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        asyncio.run(main(q, r))


def test_async_group_readers_share_work(shm_name):
    async def worker(r: ringcast.Reader) -> list[bytes]:
        return [m.body async for m in r]

    async def main(q: BroadcastQueue) -> list[list[bytes]]:
        readers = [q.reader(group="g") for _ in range(3)]
        tasks = [asyncio.create_task(worker(r)) for r in readers]
        for i in range(300):
            q.send(b"%d" % i)
            if i % 50 == 0:
                await asyncio.sleep(0)
        q.shutdown()
        out = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for r in readers:
            r.close()
        return out

    with BroadcastQueue(shm_name, create=True) as q:
        parts = asyncio.run(main(q))
    assert sorted(int(b) for p in parts for b in p) == list(range(300))
