"""ringcast's Python tests, one folder per layer.

``queue/`` the broadcast queue and its readers, leases, groups and asyncio waits; ``h5/`` the
HDF5 Streamer; ``swmr/`` following live SWMR files and fanning them out; ``pipeline/`` threaded,
process and coroutine pipelines; ``compat/`` the pysyncq and paipa pages and behaviour run on
ringcast; ``cli/`` the ``ringcast`` command, which spans the layers. A test file directly in
``tests/`` tests what several layers share (``test_remote.py``: the remote-exception record
that h5 and pipeline workers both write); the root ``conftest.py`` holds the fixtures every
test uses (unique segment names, the ``/dev/shm`` leak check).

Every folder is a package, so each test module has one dotted name (``tests.queue.test_queue``)
however pytest is started: spawn and forkserver children import the functions they are given
by that name, and same-named files in two folders do not clash.
"""
