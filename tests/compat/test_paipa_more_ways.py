"""paipa's page "More ways to use pipelines" runs on ringcast with only the import changed.

The page's code blocks are copied below verbatim (``SEED_BLOCKS``); when the page is available
(``shared/seeds/paipa-more-ways.rst`` next to the repository) a test checks the copies are
still identical. Each example runs with ``import paipa`` replaced by
``from ringcast import pipeline as paipa`` and nothing else changed; the names the page leaves
to the reader (``pipeline``, ``url``, ``PingHost``, ``twiddle_thumbs``, ...) are defined here.
The page's ``time.sleep(100)``/``time.sleep(60)`` are shortened by the ``time`` object
given to the examples.
"""

from __future__ import annotations

import pathlib
import queue
import subprocess
import sys
import textwrap
import threading
import time
import types
from typing import Any

import pytest

from ringcast import pipeline as paipa
from tests.pipeline.support import bounded, no_leaked_threads  # noqa: F401  (autouse fixture)

SEED = pathlib.Path(__file__).resolve().parents[3] / "shared/seeds/paipa-more-ways.rst"

IMPORT_CHANGE = ("import paipa", "from ringcast import pipeline as paipa")

SEED_BLOCKS = [
    """\
# put in single entry
pipeline.put(url)
# put in multiple entries
pipeline.put_all(list_of_urls)
# tell the pipeline that no further entries are to be expected.
pipeline.finish()
pipeline.run()  # will block until everything done""",
    """\
# a call to finish is not needed here. If the iterator runs out of
# items, the pipeline will start to shutdown from the source step.
pipeline.put_iterable(generator_of_urls)
pipeline.run()  # will block until everything done""",
    """\
# This will spawn a thread to run the whole thing in the background.
pipeline.put_iterable(some_stuff)
with pipeline:
     twiddle_thumbs()
     twiddle_thumbs_some_more()
# If we end up here, we can be sure that everything in pipeline has
# been processed without errors.
send_email()""",
    """\
pipeline.put_iterable(some_stuff)
# This will spawn a thread to run the whole thing in the background.
pipeline.run_forever(background=True)
twiddle_thumbs()
twiddle_thumbs_some_more()
pipeline.stop()
# If we end up here, we can be sure that everything in pipeline has
# been processed without errors.
send_email()""",
    """\
pipeline.run_forever(background=True)
time.sleep(100)
if pipeline.alive:
     print("I feel fine!")""",
    """\
import paipa
import queue
my_queue = queue.Queue()

pipeline = paipa.Pipeline(
    [
        (PingHost, 128),
    ],
    in_queue=my_queue,
)
# This one can be changed from another function, thread or scope.
should_stop = [False]

with pipeline:
    while not should_stop[0]:
        continue
    pipeline.stop()""",
    """\
pipeline = paipa.Pipeline(
    [
        (PingHost, 128),
    ],
    daemon=True
)
pipeline.put_iterable(all_hosts)
pipeline.run_forever(background=True)
time.sleep(60)
# EOF - end of file""",
]


def seed_code_blocks(text: str) -> list:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == ".. code:: python":
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(block)).strip("\n"))
        else:
            i += 1
    return blocks


def ported(block: str) -> str:
    """The example with only the import changed."""
    return block.replace(*IMPORT_CHANGE)


def short_time(limit: float = 0.05):
    return types.SimpleNamespace(sleep=lambda s: time.sleep(min(s, limit)))


class Ping:
    """Records what the example's steps saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hosts = []

    def step(self):
        rec = self

        class PingHost(paipa.AbstractStep):
            def process(self, host):
                with rec.lock:
                    rec.hosts.append(host)
                return host

        return PingHost


def test_the_copies_match_the_seed_page():
    if not SEED.exists():
        pytest.skip(f"{SEED} not available")
    assert seed_code_blocks(SEED.read_text()) == SEED_BLOCKS


def test_put_put_all_finish_run():
    ping = Ping()
    ns: dict[str, Any] = {
        "pipeline": paipa.Pipeline([(ping.step(), 4)]),
        "url": "http://a",
        "list_of_urls": [f"http://{i}" for i in range(50)],
    }
    bounded(exec, ported(SEED_BLOCKS[0]), ns)
    assert sorted(ping.hosts) == sorted(["http://a"] + ns["list_of_urls"])


def test_put_iterable_run():
    ping = Ping()
    ns: dict[str, Any] = {
        "pipeline": paipa.Pipeline([(ping.step(), 4)]),
        "generator_of_urls": (f"http://{i}" for i in range(200)),
    }
    bounded(exec, ported(SEED_BLOCKS[1]), ns)
    assert sorted(ping.hosts) == sorted(f"http://{i}" for i in range(200))


@pytest.mark.parametrize("block", [2, 3], ids=["with", "run_forever+stop"])
def test_background_run_then_everything_processed(block):
    ping = Ping()
    sent = []
    ns = {
        "pipeline": paipa.Pipeline([(ping.step(), 8)]),
        "some_stuff": range(300),
        "twiddle_thumbs": lambda: time.sleep(0.01),
        "twiddle_thumbs_some_more": lambda: None,
        "send_email": lambda: sent.append(sorted(ping.hosts)),
    }
    bounded(exec, ported(SEED_BLOCKS[block]), ns)
    # "If we end up here, we can be sure that everything ... has been processed"
    assert sent == [list(range(300))]


@pytest.mark.parametrize("block", [2, 3], ids=["with", "run_forever+stop"])
def test_background_run_with_an_error_never_reaches_send_email(block):
    def fails(x):
        if x == 5:
            raise ValueError("host 5 unreachable")
        return x

    sent = []
    ns = {
        "pipeline": paipa.Pipeline([(paipa.funcstep(fails), 8)], max_retries=0),
        "some_stuff": range(30),
        "twiddle_thumbs": lambda: None,
        "twiddle_thumbs_some_more": lambda: None,
        "send_email": lambda: sent.append(1),
    }
    with pytest.raises(ValueError, match="host 5 unreachable"):
        bounded(exec, ported(SEED_BLOCKS[block]), ns)
    assert sent == []  # paipa: the error only reached stderr and the email went out


def test_alive_check(capsys):
    ping = Ping()
    pipeline = paipa.Pipeline([(ping.step(), 2)])
    ns = {"pipeline": pipeline, "time": short_time()}
    try:
        bounded(exec, ported(SEED_BLOCKS[4]), ns)
    finally:
        bounded(pipeline.stop)
    assert capsys.readouterr().out == "I feel fine!\n"


def test_in_queue_example_stops_cleanly():
    # paipa: leaving the block calls stop() a second time -> ValueError.
    ping = Ping()
    ns = {"PingHost": ping.step()}

    def feeder():
        deadline = time.monotonic() + 5
        while "should_stop" not in ns and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(500):
            ns["my_queue"].put(i)
        ns["should_stop"][0] = True

    t = threading.Thread(target=feeder)
    t.start()
    try:
        bounded(exec, ported(SEED_BLOCKS[5]), ns)
    finally:
        t.join(5)
    assert sorted(ping.hosts) == list(range(500))
    assert isinstance(ns["my_queue"], queue.Queue) and ns["my_queue"].qsize() == 0


PRELUDE = """\
import atexit, sys, threading, time as _time, types
from ringcast import pipeline as paipa
done = []
class PingHost(paipa.AbstractStep):
    def process(self, host):
        _time.sleep({delay})
        done.append(host)
        return host
all_hosts = range({n})
time = types.SimpleNamespace(sleep=lambda s: _time.sleep(min(s, 0.2)))
atexit.register(lambda: print("processed", len(done), flush=True))
"""


def run_script(code: str) -> tuple:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return proc, time.monotonic() - t0


def test_daemon_example_exits_at_once_and_loses_data():
    code = PRELUDE.format(delay=0.05, n=20000) + ported(SEED_BLOCKS[6]) + "\n"
    proc, elapsed = run_script(code)
    assert proc.returncode == 0, proc.stderr
    processed = int(proc.stdout.split()[-1])
    assert processed < 20000  # "You will lose data here"
    assert elapsed < 6  # all 20000 would take about 8 s with 128 workers


def test_non_daemon_background_run_finishes_before_the_script_exits():
    code = (
        PRELUDE.format(delay=0.001, n=3000)
        + "pipeline = paipa.Pipeline([(PingHost, 16)])\n"
        + "pipeline.put_iterable(all_hosts)\n"
        + "pipeline.run_forever(background=True)\n"
        + "# EOF - end of file\n"
    )
    proc, _ = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "3000"
