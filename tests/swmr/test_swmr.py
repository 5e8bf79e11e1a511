"""ringcast.swmr against a real SWMR writer process (h5py, libver='latest', swmr_mode)."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

import ringcast
from ringcast.swmr import DataSource, FrameReader, KeyFollower, RowKeyFollower, SliceDict
from tests.swmr.writer import frame_value


def test_rank1_datasource_every_point_once_in_order(live):
    lv = live(n=60, frame=(3, 4))
    ds = DataSource([lv["key"]], {"data": lv["data"]}, timeout=10, finished_dataset=lv["finished"])
    got = []
    for frames in ds:
        i = frames.index
        got.append(i)
        assert frames["data"].shape == (1, 3, 4)
        np.testing.assert_array_equal(frames["data"][0], frame_value(i, (3, 4)))
        assert frames.slice_metadata == (slice(i, i + 1),)
        assert frames.maxshape == (None,)
    assert got == list(range(60))
    assert ds.is_scan_finished() and not ds.has_timed_out()


def test_rank2_grid_scan(live):
    lv = live(n=20, width=5, frame=(2, 3))
    ds = DataSource([lv["key"]], {"data": lv["data"]}, timeout=10, finished_dataset=lv["finished"])
    assert ds.kf.scan_rank == 2 and ds.kf.maxshape == (None, 5)
    got = []
    for frames in ds:
        i = frames.index
        got.append(i)
        assert frames["data"].shape == (1, 1, 2, 3)
        assert frames.slice_metadata == (slice(i // 5, i // 5 + 1), slice(i % 5, i % 5 + 1))
        np.testing.assert_array_equal(frames["data"][0, 0], frame_value(i, (2, 3)))
    assert got == list(range(20))


def test_row_key_follower_returns_the_end_of_each_complete_row(live):
    lv = live(n=12, width=4, frame=(1, 1))
    rf = RowKeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    assert list(rf) == [3, 7, 11]


def test_several_keys_report_only_points_ready_in_all(live):
    lv = live(n=40, second_key_lag=7, delay=0.005)
    kf = KeyFollower([lv["key"], lv["key2"]], timeout=10, finished_dataset=lv["finished"])
    seen = []
    for i in kf:
        # the point is ready in both keys when reported
        for k in (lv["key"], lv["key2"]):
            k.refresh()
            assert k[i] != 0
        seen.append(i)
    assert seen == list(range(40))


def test_empty_keys_at_start_are_waited_for(live):
    lv = live(n=10, start_delay=0.5)  # the reader starts while every key is still empty
    assert lv["key"].shape == (0,)
    kf = KeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    assert list(kf) == list(range(10))


def test_scalar_finished_dataset(live):
    lv = live(n=8, scalar_finished=True)
    assert lv["finished"].shape == ()
    kf = KeyFollower([lv["key"]], timeout=30, finished_dataset=lv["finished"])
    t0 = time.monotonic()
    assert list(kf) == list(range(8))
    assert kf.finished_set and not kf.timed_out and time.monotonic() - t0 < 10


def test_stall_ends_with_the_idle_timeout(live):
    lv = live(n=10, stall=(4, 3.0), finish=False)
    kf = KeyFollower([lv["key"]], timeout=0.5)
    got = list(kf)
    t_stop = time.time()
    assert got == [0, 1, 2, 3, 4] and kf.timed_out
    t_last = lv.event_times()[("key", 4)]
    assert 0.45 < t_stop - t_last < 1.5
    # iteration is not sticky: once the writer goes on, the follower does too
    kf.timeout = 10
    assert list(kf) == [5, 6, 7, 8, 9]


def test_prompt_stop_on_the_finished_flag(live):
    lv = live(n=5)
    kf = KeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    assert list(kf) == [0, 1, 2, 3, 4]
    t_stop = time.time()
    t_flag = lv.event_times()[("finished", 5)]
    assert t_stop - t_flag < 0.5, "stop must follow the flag, not the 10 s timeout"


def test_preallocated_frames_are_never_stale_fill(live):
    """swmr_tools D1: FrameReader refreshed only beyond the cached extent, so frames of a
    pre-allocated dataset read as fill values. The Advanced Use pattern must be safe."""
    lv = live(n=30, prealloc=True, frame=(4, 4))
    assert lv["data"].shape == (30, 4, 4)  # the whole extent exists from the start
    kf = KeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    fr = FrameReader(lv["data"], 1)
    for i in kf:
        frame, sl = fr.read_frame(i)
        assert sl == (slice(i, i + 1),)
        np.testing.assert_array_equal(frame[0], frame_value(i, (4, 4)))


def test_data_lagging_its_keys_is_waited_for(live):
    lv = live(n=6, keys_ahead=0.15)
    ds = DataSource([lv["key"]], {"data": lv["data"]}, timeout=10, finished_dataset=lv["finished"])
    got = [(f.index, f["data"][0].copy()) for f in ds]
    assert [i for i, _ in got] == list(range(6))
    for i, frame in got:
        np.testing.assert_array_equal(frame, frame_value(i, (3, 4)))


def test_data_that_never_comes_raises_frame_not_ready(live):
    lv = live(n=1, keys_ahead=3.0)
    ds = DataSource([lv["key"]], {"data": lv["data"]}, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(ringcast.FrameNotReady, match="beyond the extent"):
        next(ds)
    assert time.monotonic() - t0 < 2
    assert issubclass(ringcast.FrameNotReady, ValueError)


def test_same_dataset_as_key_and_data_reads_right_values(live):
    """swmr_tools D7: two handles of one dataset plus refresh gave wrong values past the first
    key chunk. DataSource reads each HDF5 object through a single handle."""
    lv = live(n=200, delay=0.0005, key_chunk=64)
    ds = DataSource(
        [lv["key"]],
        {"key": lv["key"], "data": lv["data"]},
        timeout=10,
        finished_dataset=lv["finished"],
    )
    n = 0
    for frames in ds:
        assert int(frames["key"][0]) == frames.index + 1
        n += 1
    assert n == 200


def test_a_missing_key_stalls_unless_skipping_is_asked_for(live):
    lv = live(n=12, skip_key=3, delay=0.01)
    kf = KeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    # the contiguous-prefix rule stops at the hole; the writer's finished flag ends it
    assert list(kf) == [0, 1, 2] and kf.finished_set and not kf.timed_out
    kf2 = KeyFollower(
        [lv["key"]], timeout=10, finished_dataset=lv["finished"], skip_missing_after=0.2
    )
    assert list(kf2) == [0, 1, 2] + list(range(4, 12))
    assert kf2.skipped == [3]


class CountingKey:
    """An array-like key that counts the elements read (to check incremental polling)."""

    def __init__(self, a):
        self.a = a
        self.read = 0

    @property
    def shape(self):
        return self.a.shape

    def __getitem__(self, sl):
        out = self.a[sl]
        self.read += np.size(out)
        return out


def test_each_poll_reads_only_the_new_part_of_the_keys():
    n = 1_000_000
    arr = np.zeros(n, dtype="i4")
    arr[:500_000] = 1
    key = CountingKey(arr)
    kf = KeyFollower([key], timeout=0)
    assert kf.refresh() and kf.current_max == 499_999
    first = key.read
    assert first < 600_000
    key.read = 0
    for _ in range(20):
        kf.refresh()
    assert key.read <= 20 * 4096, "an idle poll reads one small window, not the whole key"
    arr[500_000:500_010] = 1
    key.read = 0
    assert kf.refresh() and kf.current_max == 500_009 and key.read <= 4096


def test_readiness_rule_on_arrays():
    # contiguous prefix non-zero in every key; a shorter key limits the prefix
    a = np.array([1, 1, 1, 0, 1, 1])
    b = np.array([1, 1, 1, 1])
    kf = KeyFollower([a, b], timeout=0)
    assert list(kf) == [0, 1, 2] and kf.timed_out
    grid = np.ones((2, 4, 1, 1))
    kf = KeyFollower([grid], timeout=0)
    kf.check_datasets()
    assert kf.scan_rank == 2 and kf.maxshape == (2, 4)
    assert list(kf) == list(range(8)) and kf.are_keys_complete()
    kf.reset()
    assert next(kf) == 0


def test_bad_arguments_are_clear():
    with pytest.raises(TypeError, match="key dataset"):
        KeyFollower(["/entry/keys/key_1"])
    with pytest.raises(ValueError, match="at least one"):
        KeyFollower([])
    with pytest.raises(TypeError, match="finished_dataset"):
        KeyFollower([np.ones(3)], finished_dataset="/entry/finished")
    with pytest.raises(RuntimeError, match="No data specified to follow!"):
        DataSource([np.ones(3)], None)
    with pytest.raises(RuntimeError, match="same rank"):
        KeyFollower([np.ones((2, 4, 1, 1)), np.ones(8)]).check_datasets()
    with pytest.raises(ValueError, match="scan_rank"):
        FrameReader(np.ones((3, 2)), 3)
    with pytest.raises(ValueError, match="timeout"):
        KeyFollower([np.ones(3)], timeout=float("nan"))


def test_output_dataset_helpers(tmp_path):
    keys = np.ones((2, 3, 1, 1), dtype="i4")
    data = np.arange(6 * 5, dtype="f4").reshape(2, 3, 5)
    ds = DataSource([keys], {"d": data}, timeout=0)
    with h5py.File(tmp_path / "out.h5", "w") as f:
        out = None
        for frames in ds:
            result = frames["d"].sum(axis=-1)  # shape (1, 1)
            if out is None:
                out = ds.create_dataset(result[0, 0], f, "/result")
            else:
                ds.append_data(result[0, 0], frames.slice_metadata, out)
        np.testing.assert_array_equal(f["/result"][...], data.sum(axis=-1))
        assert f["/result"].maxshape == (2, 3)


def test_a_contiguous_finished_flag_raises_a_clear_error(live):
    """HDF5 >= 1.14.4 cannot refresh a contiguous dataset written under SWMR; the follower
    says so instead of passing on HDF5's 'likely file corruption'."""
    lv = live(n=3, contiguous_finished=True)
    kf = KeyFollower([lv["key"]], timeout=10, finished_dataset=lv["finished"])
    got = []
    with pytest.raises(ringcast.SWMRError, match="contiguous.*chunked"):
        for i in kf:
            got.append(i)
    assert got == [0, 1, 2]
    with pytest.raises(ringcast.SWMRError, match="/finished"):
        next(kf)  # the handle is dead now, but the error still names the dataset


def test_skip_clock_starts_when_later_points_are_ready():
    k = np.zeros(10)
    k[:3] = 1
    kf = KeyFollower([k], timeout=0.05, skip_missing_after=0.3)
    assert list(kf) == [0, 1, 2]
    time.sleep(0.4)  # point 3 is merely late: nothing after it is ready yet
    kf.refresh()
    k[4] = 1
    kf.refresh()
    assert kf.skipped == [], "a point is not skipped before later ones have waited"
    time.sleep(0.4)
    kf.refresh()
    assert kf.skipped == [3] and kf.current_max == 4
    assert list(kf) == [4]


def test_frame_not_ready_keeps_the_point_for_the_next_call():
    ds = DataSource([np.ones(3)], {"d": np.arange(2.0)}, timeout=0.1)
    assert [next(ds).index, next(ds).index] == [0, 1]
    for _ in range(2):
        with pytest.raises(ringcast.FrameNotReady):
            next(ds)  # point 2 is retried, never silently dropped
    assert ds.kf.current_key == 1


class CountingKeyWithMaxshape(CountingKey):
    def __init__(self):
        super().__init__(np.ones((2, 3, 1, 1)))

    @property
    def maxshape(self):
        return (None, None, 1, 1)


def test_row_follower_api_and_options_reach_the_frame_readers():
    rf = RowKeyFollower([np.ones((2, 3, 1, 1))], timeout=0)
    assert list(rf) == [2, 5] and rf.scan_rank == 2 and rf.maxshape == (2, 3)
    rf.reset()
    assert next(rf) == 2 and rf.inner_key_follower is rf.kf
    with pytest.raises(RuntimeError, match="unlimited"):
        RowKeyFollower([CountingKeyWithMaxshape()]).check_datasets()
    ds = DataSource([np.ones(2)], {"d": np.ones((2, 3))}, timeout=1, poll_max=0.05)
    assert ds.frame_readers["d"].poll_max == 0.05 and ds.frame_readers["d"].timeout == 1
    assert isinstance(next(ds), SliceDict)
    assert KeyFollower([np.ones(2)], timeout=None).timeout == float("inf")
    assert FrameReader(np.ones((2, 3)), 1, timeout=None).timeout == float("inf")
    with pytest.raises(ValueError, match="timeout"):
        KeyFollower([np.ones(2)], timeout="10")  # type: ignore[arg-type]


def test_create_dataset_at_a_given_point(tmp_path):
    keys = np.array([0, 1, 1])  # point 0 never comes
    ds = DataSource([keys], {"d": np.arange(3.0) + 10}, timeout=0, skip_missing_after=0)
    with h5py.File(tmp_path / "out.h5", "w") as f:
        out = None
        for frames in ds:
            if out is None:
                out = ds.create_dataset(frames["d"][0], f, "/r", frames.slice_metadata)
            else:
                ds.append_data(frames["d"][0], frames.slice_metadata, out)
        np.testing.assert_array_equal(f["/r"][...], [0, 11, 12])
