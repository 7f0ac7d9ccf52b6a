"""The store lock belongs to the writer alone: a process forked while it is held (an ingest worker) does not keep
the store locked once the writer has let go of it, or died."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from careloop.store import EventStore, StoreError


def test_a_second_writer_is_refused_while_the_lock_is_held(tmp_path: Path):
    store = EventStore.create(tmp_path / "store")
    with (store.lock(), pytest.raises(StoreError, match="being written by another careloop process"),
          EventStore.open(store.root).lock()):
        pass
    with store.lock():  # and let in once it is released
        pass


def test_a_process_forked_under_the_lock_does_not_hold_it(tmp_path: Path):
    store = EventStore.create(tmp_path / "store")
    started_r, started_w = os.pipe()
    stop_r, stop_w = os.pipe()
    with store.lock():
        pid = os.fork()
        if pid == 0:  # the child (a worker): says it runs, then outlives the writer's lock until told to stop
            try:
                os.close(stop_w)
                os.write(started_w, b"x")
                os.read(stop_r, 1)
            finally:
                os._exit(0)
    os.close(started_w)
    os.close(stop_r)
    try:
        assert os.read(started_r, 1) == b"x"
        with store.lock():  # the child is still alive, but it must not be holding the lock
            pass
    finally:
        os.close(stop_w)
        os.close(started_r)
        os.waitpid(pid, 0)
