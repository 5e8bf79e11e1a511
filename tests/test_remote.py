"""ringcast._remote: the one record that carries an exception (and its traceback) from a
worker process or a Rust reading thread to the consumer."""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

import ringcast
import ringcast.h5
from ringcast import _remote
from ringcast.h5 import Streamer


class NeedsTwoArgs(Exception):
    """Pickles, but does not unpickle (its __init__ takes two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001 - the test wants it with its traceback
        return e


def _record(*fields: bytes) -> bytes:
    return _remote.MAGIC + b"".join(struct.pack("<I", len(f)) + f for f in fields)


def test_an_exception_comes_back_with_its_traceback_and_origin():
    record = _remote.pack(_raised(KeyError("missing")))
    exc = _remote.unpack(record, "worker 3")
    assert type(exc) is KeyError and exc.args == ("missing",)
    cause = exc.__cause__
    assert isinstance(cause, _remote.RemoteTraceback)
    assert "in _raised" in cause.tb and str(cause) == f'\n"""\n{cause.tb}"""'
    assert getattr(exc, "__notes__", ["(raised in worker 3)"]) == ["(raised in worker 3)"]
    assert not getattr(_remote.unpack(record), "__notes__", None)


def test_an_exception_that_does_not_unpickle_becomes_remote_error():
    exc = _remote.unpack(_remote.pack(_raised(NeedsTwoArgs(1, 2))))
    assert type(exc) is _remote.RemoteError
    assert str(exc) == f"{__name__}.NeedsTwoArgs: 1/2"
    assert "raise exc" in str(exc.__cause__)


def test_an_exception_that_does_not_pickle_is_sent_as_text():
    class Local(Exception):  # a local class pickles by a name that cannot be found
        pass

    record = _remote.pack(_raised(Local("not here")))
    exc = _remote.unpack(record)
    assert type(exc) is _remote.RemoteError
    assert str(exc).endswith("Local: not here")


def test_a_record_without_pickle_names_a_ringcast_class():
    """What the native (Rust) reader writes: a type, a message, no traceback, no pickle."""
    exc = _remote.unpack(_record(b"ringcast.h5.ReadError", b"chunk at row 7", b"", b""))
    assert type(exc) is ringcast.h5.ReadError and str(exc) == "chunk at row 7"
    assert exc.__cause__ is None
    exc = _remote.unpack(_record(b"ringcast.Empty", b"nothing", b"tb", b""))
    assert type(exc) is ringcast.Empty and isinstance(exc.__cause__, _remote.RemoteTraceback)
    for name in (b"builtins.ValueError", b"ringcast.NoSuchClass", b"ringcast.h5.Streamer"):
        exc = _remote.unpack(_record(name, b"m", b"", b""))
        assert type(exc) is _remote.RemoteError and str(exc) == f"{name.decode()}: m"


@pytest.mark.parametrize("keep", [0, 3, 9, 30, 60, -1])
def test_a_record_cut_short_says_what_it_could_read(keep):
    record = _remote.pack(_raised(ValueError("a long story")))
    cut = record[:keep]
    exc = _remote.unpack(cut, "somewhere", cut_short=lambda t: RuntimeError("cut: " + t))
    assert type(exc) is RuntimeError and str(exc).startswith("cut: ")
    assert exc.__cause__ is None and exc.__suppress_context__
    if keep >= 60:
        assert "builtins.ValueError: a long story" in str(exc)
    default = _remote.unpack(cut)
    assert type(default) is _remote.RemoteError


def test_something_else_than_a_record_is_not_trusted():
    exc = _remote.unpack(b"RCERR:an old record")
    assert type(exc) is _remote.RemoteError and "an old record" in str(exc)


def test_a_rust_record_cut_to_a_small_slot_is_a_read_error(tmp_path):
    """A block of one 8-byte row: the native reader's report does not fit its slot."""
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("z", data=np.arange(40.0), chunks=(10,), compression="gzip")
        info = ds.id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with Streamer(path) as s:
        q = s.get_queue("/z", n_procs=1, block_size=1, ordered=True, native=True)
        assert q.native
        errors = []
        for g in q.iter():
            try:
                with g:
                    pass
            except ringcast.h5.ReadError as e:
                errors.append(str(e))
        assert len(errors) == 10
        assert all("its report did not fit the slot" in e for e in errors)
        assert all("ringcast.h5.ReadError" in e for e in errors)
