"""ringcast.pipeline process steps: workers are real processes fed through shared memory.

Every run is bounded (``bounded()`` runs it in a helper thread and fails the test if it does
not return in time), and every test checks that no child process is left behind; the conftest
checks ``/dev/shm``. The step functions are at module level so that spawned workers can import
them.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import ringcast
from ringcast.pipeline import (
    AbstractStep,
    Pipeline,
    ProcessStep,
    SkipEntry,
    WorkerDied,
    funcstep,
    iterstep,
    procstep,
    wire,
)
from ringcast.pipeline import process as pproc

# ------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def no_child_left():
    yield
    deadline = time.monotonic() + 5.0
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = multiprocessing.active_children()
    for p in left:
        p.kill()
        p.join(5)
    assert not left, f"child processes left behind: {left}"


def bounded(fn, timeout=60.0, pipeline=None):
    """Call ``fn()`` in a helper thread; fail if it does not return within ``timeout``."""
    box: dict = {}

    def main():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["exc"] = exc

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        run = getattr(pipeline, "_run", None)
        if run is not None:
            run.abort()
        pytest.fail(f"{fn} did not return within {timeout} s")
    if "exc" in box:
        raise box["exc"]
    return box.get("value")


def square(x):
    return x * x


def add_one(a):
    return a + 1


def describe_array(a):
    return {"shape": a.shape, "writeable": a.flags.writeable, "sum": float(a.sum())}


def sleep_then_whoami(x):
    time.sleep(0.05)
    return os.getpid()


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"cannot take {x}")
    return x


def count_attempts(arg):
    """Record one attempt per call in a file; fail until ``fail_times`` attempts were made."""
    x, directory, fail_times = arg
    path = os.path.join(directory, str(x))
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        attempts = len(f.read())
    if attempts <= fail_times:
        raise RuntimeError(f"attempt {attempts} on {x}")
    return x


def kill_self_on(arg):
    x, victim = arg
    if x == victim:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x


def kill_self_once(arg):
    """SIGKILL this worker the first time any worker takes ``victim``."""
    x, victim, marker = arg
    if x == victim:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x  # the redelivered attempt: succeed
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x


def exit_seven(x):
    os._exit(7)


def write_pid_and_sleep(arg):
    x, directory = arg
    path = os.path.join(directory, "pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)
    return x


def slow(x):
    time.sleep(0.2)
    return x


def mark_and_sleep(arg):
    x, directory = arg
    open(os.path.join(directory, str(x)), "w").close()
    time.sleep(1.0)
    return x


def skip_odd(x):
    if x % 2:
        raise SkipEntry()
    return x


def identity(x):
    return x


PARENT_HOOKS: list = []  # filled in the parent only (each worker has its own copy)


class Scaled(ProcessStep):
    """Class form: options, hooks in the worker process, meta items, reenqueue."""

    def step_initialize(self):
        PARENT_HOOKS.append(("step_initialize", os.getpid()))

    def step_shutdown(self):
        PARENT_HOOKS.append(("step_shutdown", os.getpid()))

    def initialize(self, factor=1):  # type: ignore[override]  # the step's options, by keyword
        self.factor = factor
        self.pid = os.getpid()

    def thread_initialize(self):
        self.seen = 0

    def process(self, item):
        if item < 0:
            self.reenqueue(-item)  # a new item, processed later
            raise SkipEntry()
        self.seen += 1
        return (item * self.factor, self.pid, self.sibling.index)

    def process_meta(self, payload):
        return ("meta", payload, self.pid)


class BadInit(ProcessStep):
    def initialize(self):  # type: ignore[override]  # the step's options, by keyword
        raise KeyError("no config in the worker")

    def process(self, item):
        return item


class BadThreadInit(ProcessStep):
    def thread_initialize(self):
        raise OSError("device busy")

    def process(self, item):
        return item


class ShutdownFails(ProcessStep):
    def process(self, item):
        return item

    def thread_shutdown(self):
        raise RuntimeError("shutdown hook failed")


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unpicklable_exception(x):
    raise NeedsTwoArgs(1, 2)


def unpicklable_result(x):
    return threading.Lock()


@procstep
def decorated(x):
    return x + 100


def collect_into(out):
    def record(x):
        out.append(x)
        return x

    return (funcstep(record), 1)


# ------------------------------------------------------------------------------------------------
# items through a process step


@pytest.mark.parametrize("workers", [1, 2])
def test_three_steps_every_item_exactly_once(workers):
    out: list = []
    p = Pipeline(
        [(funcstep(identity), 1), (procstep(square), workers), collect_into(out)], quiet=True
    )
    n = 500
    p.put_all(range(n))
    p.finish()
    bounded(p.run, pipeline=p)
    assert collections.Counter(out) == collections.Counter(x * x for x in range(n))
    assert p.count == n and p.ok
    st = p.stats().steps[1]
    assert (st.name, st.workers, st.alive) == ("square", workers, 0)
    assert (st.items_in, st.items_out, st.failed, st.retried, st.discarded) == (n, n, 0, 0, 0)
    assert st.busy_seconds > 0


def test_one_worker_keeps_order_and_put_iterable():
    out: list = []
    p = Pipeline([(procstep(square), 1), collect_into(out)], quiet=True, threshold=4)
    p.put_iterable(iter(range(300)))
    bounded(p.run, pipeline=p)
    assert out == [x * x for x in range(300)]


def test_two_workers_share_the_work():
    pids: list = []
    p = Pipeline([(procstep(sleep_then_whoami), 2), collect_into(pids)], quiet=True)
    p.put_all(range(40))  # 2 s of work for one worker: the second one starts long before
    p.finish()
    bounded(p.run, pipeline=p)
    assert len(pids) == 40
    assert os.getpid() not in pids
    assert len(set(pids)) == 2


def test_decorated_function_and_run_again():
    out: list = []
    p = Pipeline([(decorated, 2), collect_into(out)], quiet=True)
    for _ in range(2):  # a second run starts new workers
        p.put_all(range(10))
        p.finish()
        bounded(p.run, pipeline=p)
    assert sorted(out) == sorted(list(range(100, 110)) * 2)
    assert p.count == 20


def test_background_run_with_statement():
    out: list = []
    p = Pipeline([(procstep(square), 2), collect_into(out)], quiet=True)

    def body():
        with p:
            for i in range(100):
                p.put(i)

    bounded(body, pipeline=p)
    assert sorted(out) == [i * i for i in range(100)]


def test_class_form_options_hooks_meta_and_reenqueue():
    out: list = []
    PARENT_HOOKS.clear()
    p = Pipeline([(Scaled, 2, {"factor": 10}), collect_into(out)], quiet=True)
    p.put_all([1, 2, -3])
    p.put_meta("hello")
    p.put(4)
    p.finish()
    bounded(p.run, pipeline=p)
    values = sorted(v for v, pid, index in out)
    assert values == [10, 20, 30, 40]  # -3 was reenqueued as 3
    assert all(pid != os.getpid() for _, pid, _ in out)
    assert {index for _, _, index in out} <= {0, 1}
    st = p.stats().steps[0]
    assert st.items_in == 5 and st.items_out == 4 and st.skipped == 1
    assert p.count == 4  # the meta item is not counted
    me = os.getpid()
    assert PARENT_HOOKS == [("step_initialize", me), ("step_shutdown", me)]


def test_meta_item_goes_through_process_meta():
    metas: list = []

    class Catch(AbstractStep):
        def process(self, item):
            return item

        def process_meta(self, payload):
            metas.append(payload)
            return payload

    p = Pipeline([(Scaled, 1), (Catch, 1)], quiet=True)
    p.put(1)
    p.put_meta({"k": 1})
    p.finish()
    bounded(p.run, pipeline=p)
    assert len(metas) == 1
    tag, payload, pid = metas[0]
    assert tag == "meta" and payload == {"k": 1} and pid != os.getpid()


def test_skip_entry_in_a_worker():
    out: list = []
    p = Pipeline([(procstep(skip_odd), 2), collect_into(out)], quiet=True)
    p.put_all(range(20))
    p.finish()
    bounded(p.run, pipeline=p)
    assert sorted(out) == list(range(0, 20, 2))
    st = p.stats().steps[0]
    assert (st.items_in, st.items_out, st.skipped) == (20, 10, 10)


# ------------------------------------------------------------------------------------------------
# numpy arrays


def test_large_array_round_trip():
    out: list = []
    a = np.arange(8 << 20, dtype=np.float64)  # 64 MiB
    assert a.nbytes == 64 << 20
    p = Pipeline([(procstep(add_one, capacity=160 << 20), 1), collect_into(out)], quiet=True)
    p.put(a)
    p.finish()
    bounded(p.run, timeout=90, pipeline=p)
    (b,) = out
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(b, a + 1)
    assert b.flags.writeable


def test_arrays_arrive_writable_in_the_worker():
    out: list = []
    arrays: list[np.ndarray] = [np.full((64, 32), i, dtype=np.int32) for i in range(5)]
    arrays.append(np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    arrays.append(np.arange(10)[::2])  # not contiguous
    p = Pipeline([(procstep(describe_array), 2), collect_into(out)], quiet=True)
    p.put_all(arrays)
    p.finish()
    bounded(p.run, pipeline=p)
    assert sorted(d["sum"] for d in out) == sorted(float(a.sum()) for a in arrays)
    assert all(d["writeable"] for d in out)


def test_array_data_is_not_pickled():
    """The message carries the array's bytes out of band: the pickle itself stays tiny."""
    a = np.arange(8 << 20, dtype=np.float64)
    total, parts = wire.encode(wire.ITEM, 7, 0, 0.0, {"frame": a, "n": 1})
    inband = parts[1][1]
    assert len(inband) < 1024
    assert total >= a.nbytes
    assert parts[2][1].nbytes == a.nbytes and parts[2][0] % 64 == 0
    body = bytearray(total)
    for off, part in parts:
        body[off : off + len(memoryview(part).cast("B"))] = part
    kind, seq, _, _, obj = wire.decode(body)
    assert (kind, seq, obj["n"]) == (wire.ITEM, 7, 1)
    assert np.array_equal(obj["frame"], a) and obj["frame"].flags.writeable


def test_item_too_large_for_the_queue_fails_clearly():
    out: list = []
    p = Pipeline([(procstep(add_one, capacity=1 << 20), 1), collect_into(out)], quiet=True)
    p.put_all([np.zeros(1 << 18, dtype=np.float64), np.zeros(4)])  # 2 MiB, then a small one
    p.finish()
    with pytest.raises(ringcast.InvalidArgument, match="does not fit its work queue"):
        bounded(p.run, pipeline=p)
    assert len(out) == 1
    assert p.stats().steps[0].failed == 1


# ------------------------------------------------------------------------------------------------
# errors


def test_exception_comes_back_with_the_remote_traceback():
    out: list = []
    calls: list = []
    p = Pipeline(
        [(procstep(fail_on_three), 2), collect_into(out)],
        quiet=True,
        max_retries=0,
        fail_callback=lambda: calls.append(1),
    )
    p.put_all(range(6))
    p.finish()
    with pytest.raises(ValueError, match="cannot take 3") as info:
        bounded(p.run, pipeline=p)
    cause = info.value.__cause__
    assert isinstance(cause, pproc.RemoteTraceback)
    assert "in fail_on_three" in str(cause)
    assert 'raise ValueError(f"cannot take {x}")' in str(cause)
    assert sorted(out) == [0, 1, 2, 4, 5]  # the others were processed
    assert not p.ok and calls == [1]
    (failure,) = p.failures
    assert (failure.step, failure.where, failure.item, failure.attempts) == (
        "fail_on_three",
        "process",
        3,
        1,
    )


def test_exception_that_does_not_unpickle_becomes_remote_error():
    p = Pipeline([(procstep(raise_unpicklable_exception), 1)], quiet=True, max_retries=0)
    p.put(1)
    p.finish()
    with pytest.raises(pproc.RemoteError, match="NeedsTwoArgs: 1/2") as info:
        bounded(p.run, pipeline=p)
    assert "raise NeedsTwoArgs(1, 2)" in str(info.value.__cause__)


def test_unpicklable_result_fails_the_item():
    p = Pipeline([(procstep(unpicklable_result), 1)], quiet=True, max_retries=0)
    p.put(1)
    p.finish()
    with pytest.raises(TypeError, match="could not be sent to the parent"):
        bounded(p.run, pipeline=p)


def test_unpicklable_item_fails_that_item_only():
    out: list = []
    p = Pipeline([(procstep(identity), 1), collect_into(out)], quiet=True)
    p.put_all([1, threading.Lock(), 2])
    p.finish()
    with pytest.raises(TypeError):
        bounded(p.run, pipeline=p)
    assert out == [1, 2]
    assert p.failures[0].where == "process" and p.stats().steps[0].failed == 1


@pytest.mark.parametrize("fail_times, max_retries", [(2, 2), (3, 2), (1, 0)])
def test_retries_are_counted_exactly(tmp_path, fail_times, max_retries):
    out: list = []
    items = [(i, str(tmp_path), fail_times) for i in range(4)]
    p = Pipeline(
        [(procstep(count_attempts), 2), collect_into(out)], quiet=True, max_retries=max_retries
    )
    p.put_all(items)
    p.finish()
    succeeds = fail_times <= max_retries
    if succeeds:
        bounded(p.run, pipeline=p)
        assert sorted(x for x in out) == [0, 1, 2, 3]
    else:
        with pytest.raises(RuntimeError, match="attempt"):
            bounded(p.run, pipeline=p)
        assert out == []
        assert len(p.failures) == 4
        assert {f.attempts for f in p.failures} == {max_retries + 1}
    for i in range(4):
        with open(tmp_path / str(i)) as f:
            assert len(f.read()) == min(fail_times + 1, max_retries + 1)
    st = p.stats().steps[0]
    assert st.retried == 4 * min(fail_times, max_retries)
    assert st.failed == (0 if succeeds else 4)


def test_lambda_under_spawn_is_refused_clearly():
    with pytest.raises(ringcast.InvalidArgument, match="module level") as info:
        Pipeline([(procstep(lambda x: x), 1)])
    assert "<lambda>" in str(info.value)

    def nested(x):
        return x

    with pytest.raises(ringcast.InvalidArgument, match="importable by name"):
        Pipeline([(procstep(nested), 2)])
    with pytest.raises(ringcast.InvalidArgument, match="start_method"):
        procstep(identity, start_method="teleport")
    with pytest.raises(ringcast.InvalidArgument, match="capacity"):
        Pipeline([(procstep(identity, capacity=10), 1)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork in a threaded process (3.12+)
def test_lambda_works_with_fork():
    out: list = []
    p = Pipeline([(procstep(lambda x: -x, start_method="fork"), 2), collect_into(out)])
    p.put_all(range(10))
    p.finish()
    bounded(p.run, pipeline=p)
    assert sorted(out) == sorted(-x for x in range(10))


def test_forkserver():
    out: list = []
    p = Pipeline([(procstep(square, start_method="forkserver"), 2), collect_into(out)])
    p.put_all(range(10))
    p.finish()
    bounded(p.run, pipeline=p)
    assert sorted(out) == [x * x for x in range(10)]


def test_initialize_failure_in_the_workers_is_raised():
    p = Pipeline([(BadInit, 2)], quiet=True)
    p.put_all(range(5))
    p.finish()
    t0 = time.monotonic()
    with pytest.raises(KeyError, match="no config") as info:
        bounded(p.run, pipeline=p)
    assert time.monotonic() - t0 < 30
    assert "in initialize" in str(info.value.__cause__)
    assert [f.where for f in p.failures] == ["initialize", "initialize"]
    assert p.stats().steps[0].discarded == 5


def test_thread_initialize_and_thread_shutdown_failures():
    p = Pipeline([(BadThreadInit, 1)], quiet=True)
    p.put_all(range(3))
    p.finish()
    with pytest.raises(OSError, match="device busy"):
        bounded(p.run, pipeline=p)
    assert p.failures[0].where == "thread_initialize"

    p = Pipeline([(ShutdownFails, 2)], quiet=True)
    p.put_all(range(3))
    p.finish()
    with pytest.raises(RuntimeError, match="shutdown hook failed"):
        bounded(p.run, pipeline=p)
    assert [f.where for f in p.failures] == ["thread_shutdown", "thread_shutdown"]
    assert p.count == 3


def test_options_passed_without_initialize_raise_at_start():
    p = Pipeline([(procstep(identity), 1, {"x": 1})], quiet=True)
    p.put(1)
    p.finish()
    with pytest.raises(TypeError, match="does not take any"):
        bounded(p.run, pipeline=p)
    assert multiprocessing.active_children() == []


def test_a_later_step_failing_to_start_stops_the_workers():
    class Refuses(AbstractStep):
        def initialize(self):  # type: ignore[override]  # the step's options, by keyword
            raise LookupError("not today")

        def process(self, item):
            return item

    p = Pipeline([(procstep(square), 2), (Refuses, 1)], quiet=True)
    p.put_all(range(5))
    p.finish()
    with pytest.raises(LookupError, match="not today"):
        bounded(p.run, pipeline=p)
    assert multiprocessing.active_children() == []  # the workers were started, then stopped
    assert not p.running


# ------------------------------------------------------------------------------------------------
# dead workers


def test_worker_killed_mid_item_is_reported_promptly(tmp_path):
    """A worker SIGKILLed while it works on a long item: stop() reports it, with no wait."""
    p = Pipeline([(procstep(write_pid_and_sleep), 1)], quiet=True)
    p.run_forever(background=True)
    for i in range(3):
        p.put((i, str(tmp_path)))
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the worker never started its item"
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(WorkerDied) as info:
        bounded(p.stop, timeout=30, pipeline=p)
    assert time.monotonic() - t0 < 5  # not the 60 s of the item
    err = info.value
    assert (err.pid, err.exitcode, err.step) == (pid, -signal.SIGKILL, "write_pid_and_sleep")
    assert f"pid {pid}" in str(err) and "SIGKILL" in str(err)
    assert p.failures[0].where == "worker"
    assert p.stats().steps[0].discarded >= 1  # the items it will never process


def test_worker_killing_itself_with_one_worker():
    p = Pipeline([(procstep(kill_self_on), 1)], quiet=True)
    p.put_all([(i, 5) for i in range(20)])
    p.finish()
    t0 = time.monotonic()
    with pytest.raises(WorkerDied, match="killed by SIGKILL"):
        bounded(p.run, pipeline=p)
    assert time.monotonic() - t0 < 30
    assert p.count == 5


def test_dead_workers_item_is_redelivered_to_another(tmp_path):
    out: list = []
    marker = str(tmp_path / "killed")
    p = Pipeline([(procstep(kill_self_once), 2), collect_into(out)], quiet=True)
    p.put_all([(i, 7, marker) for i in range(30)])
    p.finish()
    with pytest.raises(WorkerDied) as info:
        bounded(p.run, pipeline=p)
    assert "redelivered to another worker" in str(info.value)
    assert sorted(out) == list(range(30))  # every item once, the killed one included
    assert [f.where for f in p.failures] == ["worker"]
    assert os.path.exists(marker)


def test_os_exit_in_a_worker():
    p = Pipeline([(procstep(exit_seven), 2)], quiet=True)
    p.put_all(range(4))
    p.finish()
    with pytest.raises(WorkerDied, match="exited with code 7") as info:
        bounded(p.run, pipeline=p)
    assert info.value.exitcode == 7
    assert all(f.where == "worker" for f in p.failures) and len(p.failures) == 2


# ------------------------------------------------------------------------------------------------
# stopping


def test_stop_without_drain_discards_queued_items(tmp_path):
    """drain=False: each worker finishes its current item; what was sent ahead is dropped."""
    out: list = []
    step = procstep(mark_and_sleep, prefetch=4)  # 2 workers x (1 + 4) items sent ahead
    p = Pipeline([(step, 2), collect_into(out)], quiet=True)
    p.run_forever(background=True)
    p.put_all((i, str(tmp_path)) for i in range(100))
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path)) < 2:  # both workers are in their first item
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.01)
    t0 = time.monotonic()
    bounded(lambda: p.stop(drain=False), timeout=30, pipeline=p)
    assert time.monotonic() - t0 < 2.5  # one item (1 s), not the 5 queued per worker
    assert len(os.listdir(tmp_path)) <= 4
    st = p.stats().steps[0]
    assert st.discarded >= 90
    assert st.items_out == len(out) == 0


def test_failure_downstream_stops_the_process_step():
    @iterstep
    def explode(items):
        for i, x in enumerate(items):
            if i == 3:
                raise ZeroDivisionError("downstream")
            yield x

    p = Pipeline([(procstep(slow), 2), (explode, 1)], quiet=True)
    p.put_all(range(100))
    p.finish()
    t0 = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        bounded(p.run, pipeline=p)
    assert time.monotonic() - t0 < 10  # not 100 x 0.2 s / 2


def test_workers_exit_when_the_run_ends():
    p = Pipeline([(procstep(identity), 3)], quiet=True)
    p.put_all(range(10))
    p.finish()
    bounded(p.run, pipeline=p)
    assert multiprocessing.active_children() == []
    assert p.stats().steps[0].alive == 0


def test_exceptions_pickle():
    err = WorkerDied("worker 0 died", "step", 0, 123, -9)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.step, back.pid, back.exitcode) == ("worker 0 died", "step", 123, -9)
    assert isinstance(back, ringcast.RingcastError)
    assert isinstance(back, ringcast.WorkerDied) and isinstance(back, RuntimeError)
