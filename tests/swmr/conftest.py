"""The ``live`` fixture: a real SWMR writer process (``writer.write``, spawned) and its file."""

from __future__ import annotations

import multiprocessing as mp

import h5py
import pytest

from tests.swmr.writer import write

ctx = mp.get_context("spawn")


class Live:
    """A writer process and the file it writes."""

    def __init__(self, path: str, **opts):
        self.path = path
        self.events = ctx.Queue()
        ready = ctx.Event()
        self.proc = ctx.Process(target=write, args=(path, ready, self.events), kwargs=opts)
        self.proc.start()
        assert ready.wait(60), "the writer did not start"
        self.file = h5py.File(path, "r", swmr=True)

    def __getitem__(self, name):
        return self.file[name]

    def event_times(self) -> dict:
        out: dict = {}
        while True:
            try:
                kind, i, t = self.events.get(timeout=0.5)
            except Exception:
                return out
            out[(kind, i)] = t

    def close(self):
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.file.close()
        assert self.proc.exitcode == 0


@pytest.fixture
def live(tmp_path):
    made: list = []

    def start(**opts):
        lv = Live(str(tmp_path / f"scan{len(made)}.h5"), **opts)
        made.append(lv)
        return lv

    yield start
    for lv in made:
        lv.close()
