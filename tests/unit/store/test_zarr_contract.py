"""What the store relies on in zarr's LocalStore, pinned: a chunk is written to a temporary
`<chunk>.<32 hex>.partial` beside it and renamed into place, so a writer killed mid-write
leaves the old chunk (or none) and a leftover that CEStore recognises (docs/design.md §6).

If a zarr release changes this, these tests fail before the store's leftover handling does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np

from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.repair import repair
from cejobs.store.create import create_or_open
from cejobs.store.format import LEFTOVER_AGE_S
from cejobs.store.store import CEStore
from tests.conftest import REPO

LAYOUT = Layout(num_sources=4, ces_per_source=2, num_classes=2, image_shape=(1, 2, 2),
                shard_size=2)
PARTIAL = re.compile(r"^(?P<chunk>[^/]+)\.[0-9a-f]{32}\.partial$")


def _store(path) -> CEStore:
    return create_or_open(path, {"seed": 0}, LAYOUT, generation_arrays(), {"config": {}})


def test_chunk_written_to_partial_then_renamed(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.zarr")
    chunk = store.chunk_path("ce/l2", 1)
    seen = []
    real = type(chunk).replace

    def replace(self, target):
        seen.append((self.name, self.parent, str(target), chunk.exists()))
        return real(self, target)

    monkeypatch.setattr(type(chunk), "replace", replace)
    store.array("ce/l2")[LAYOUT.rows(1)] = np.ones((2, 2), np.float32)
    [(name, parent, target, existed)] = [s for s in seen if s[2] == str(chunk)]
    assert PARTIAL.match(name)["chunk"] == chunk.name and parent == chunk.parent
    assert not existed  # the chunk appears only by the rename
    assert not list(chunk.parent.glob("*.partial"))


def test_writer_killed_mid_write_leaves_a_leftover_the_store_finds(tmp_path):
    path = tmp_path / "s.zarr"
    _store(path)
    child = textwrap.dedent(f"""
        import os, pathlib
        import numpy as np
        from cejobs.store.store import CEStore
        pathlib.Path.replace = lambda self, target: os._exit(9)  # dies before the rename
        CEStore.open({str(path)!r}).array("ce/l2")[2:4] = np.ones((2, 2), np.float32)
    """)
    r = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    store = CEStore.open(path)
    chunk = store.chunk_path("ce/l2", 1)
    [leftover] = chunk.parent.glob("*.partial")
    assert PARTIAL.match(leftover.name)["chunk"] == chunk.name and not chunk.exists()
    [finding] = repair(store).findings  # young: maybe a live writer's, so kept; no damage
    assert finding.text.startswith(f"kept leftover {leftover.relative_to(path)}")
    old = time.time() - LEFTOVER_AGE_S - 1
    os.utime(leftover, (old, old))
    store.write_shard(1, {"ce/l2": np.full((2, 2), 2.0, np.float32)})  # the redo cleans up
    assert not leftover.exists() and store.read_rows("ce/l2")[2:4].tolist() == [[2, 2], [2, 2]]
