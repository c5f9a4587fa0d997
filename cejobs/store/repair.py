"""The one repair policy of a store (generate, evaluate, `status --verify`, the SLURM summary).

Damage is found, said in one line each, and mended so that exactly the lost work is redone:
- a node's `zarr.json` that differs from the copy kept in its group's attributes is
  rewritten from that copy (a v1 store keeps none: one line says what to restore);
- a flag chunk that does not read back counts as not done and is rewritten;
- a done shard whose chunk is missing, not a file, empty, or (with `decode`) fails to decode
  or its crc32c checksum loses its flag: generation arrays reset `shard/done` (generation is
  redone), `eval/<name>/` arrays reset `eval/<name>/done` (that classifier's evaluation is
  redone); a folder where a chunk belongs is removed;
- an `eval/<name>` group whose own metadata is damaged is removed (evaluate redoes it);
- `*.partial` leftovers are never damage (chunks are renamed into place whole): those older
  than LEFTOVER_AGE_S are removed, younger ones may be a live writer's and are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from cejobs.store.layout import EVAL_ARRAYS, eval_prefix
from cejobs.errors import StoreError
from cejobs.store.format import LEFTOVER_AGE_S, write_error
from cejobs.store.store import CEStore


@dataclass(frozen=True)
class Finding:
    text: str  # one line: what was found, and what was done about it
    prefix: str | None = None  # the flags of the shard that is redone: "shard", "eval/<name>"
    shard: int | None = None


@dataclass
class Repair:
    findings: list[Finding] = field(default_factory=list)
    cleared: dict[str, list[int]] = field(default_factory=dict)  # prefix -> flags reset
    rewritten: list[str] = field(default_factory=list)  # metadata keys mended from copies
    removed: list[str] = field(default_factory=list)  # eval groups removed (evaluate redoes)
    unchecked: list[str] = field(default_factory=list)  # arrays without chunk checksums

    @property
    def generation(self) -> list[int]:
        """Generation shards whose done flag was reset (generate redoes them)."""
        return self.cleared.get("shard", [])

    @property
    def damaged(self) -> bool:
        """Whether damage was found (and mended, or its shards reset for redo)."""
        return bool(self.rewritten or self.removed) or any(self.cleared.values())

    def lines(self) -> list[str]:
        out = []
        for f in self.findings:
            where = "" if f.shard is None else (
                f"shard {f.shard}: " if f.prefix == "shard" else f"{f.prefix} shard {f.shard}: ")
            out.append(f"verify: {where}{f.text}")
        return out

    def summary(self) -> str:
        """One line: which shards will be redone, and by which command."""
        parts = [f"generation of shard(s) {v} (run generate)" if k == "shard" else
                 f"{k} of shard(s) {v} (run evaluate)" for k, v in self.cleared.items() if v]
        parts += [f"all of {k} (run evaluate)" for k in self.removed]
        mended = f"{len(self.rewritten)} metadata file(s) rewritten; " if self.rewritten else ""
        return mended + ("redo: " + "; ".join(parts) if parts else "nothing to redo")


@dataclass(frozen=True)
class _Scope:
    prefix: str  # where its flags are: "shard" or "eval/<name>"
    arrays: list[str]  # full array names
    copies: dict[str, dict] | None  # node path -> its zarr.json, as created (None: v1)


def _scopes(store: CEStore, rep: Repair) -> list[_Scope]:
    scopes = [_Scope("shard", list(store.attrs["arrays"]), store.attrs.get("metadata"))]
    for name in store.eval_names():
        prefix = eval_prefix(name)
        attrs = store.group_attrs(prefix)
        if attrs is None:
            store.storage.remove(prefix)
            rep.removed.append(prefix)
            rep.findings.append(Finding(f"{prefix}/zarr.json is damaged: removed {prefix}; "
                                        f"evaluate redoes that classifier"))
            continue
        copies = attrs.get("metadata")
        scopes.append(_Scope(prefix, [f"{prefix}/{a}" for a in EVAL_ARRAYS],
                             {f"{prefix}/{k}": v for k, v in copies.items()} if copies else None))
    return scopes


def _mend_metadata(store: CEStore, scope: _Scope, rep: Repair) -> bool:
    """Rewrite damaged metadata from the copies; False when an eval group can't be mended."""
    if scope.copies is None:  # a v1 store: no copy; an array that opens is taken as is
        for name in scope.arrays:
            try:
                store.array(name)
            except StoreError as e:
                if scope.prefix == "shard":
                    raise StoreError(f"{e}. This store ({store.format}) keeps no copy of it: "
                                     f"restore {name}/zarr.json from a backup") from None
                store.storage.remove(scope.prefix)
                rep.removed.append(scope.prefix)
                rep.findings.append(Finding(f"{name}/zarr.json is damaged: removed "
                                            f"{scope.prefix}; evaluate redoes that classifier"))
                return False
        return True
    for node, doc in scope.copies.items():
        key = f"{node}/zarr.json"
        try:
            intact = (store.storage.kind(key) == "file"
                      and json.loads(store.storage.read(key)) == doc)
        except (OSError, ValueError):
            intact = False
        if not intact:
            store.storage.write(key, json.dumps(doc, indent=2).encode())
            rep.rewritten.append(key)
            rep.findings.append(Finding(f"{key} was damaged: rewritten from the copy in the "
                                        f"group's attributes"))
    store.forget_arrays()
    return True


def _chunk_problem(store: CEStore, name: str, shard: int, decode: bool) -> str | None:
    key = store.chunk_key(name, shard)
    kind = store.storage.kind(key)
    if kind != "file":
        return f"missing chunk {key}" if kind == "missing" else f"chunk {key} is a {kind}"
    if store.storage.size(key) == 0:
        return f"empty chunk {key}"
    if decode:
        arr = store.array(name)
        try:
            arr[shard if arr.metadata.dimension_names[0] == "shard" else store.layout.rows(shard)]
        except Exception as e:  # noqa: BLE001 - any failure to read back is damage
            why = "fails its checksum" if "checksum" in str(e) else type(e).__name__
            return f"unreadable chunk {key} ({why})"
    return None


def _has_checksum(store: CEStore, name: str) -> bool:
    return any(c.get("name") == "crc32c" for c in store.array(name).metadata.to_dict()["codecs"])


def repair(store: CEStore, *, decode: bool = False, decode_eval: bool | None = None) -> Repair:
    """Find and mend damage (module docstring); `decode` re-reads every chunk of every done
    shard (`status --verify`), else only their presence is checked (generate's start);
    `decode_eval` does so for eval arrays alone (evaluate's start). One-line StoreError when
    damage can't be mended, or when the storage refuses the repair's writes."""
    decode_eval = decode if decode_eval is None else decode_eval
    rep = Repair()
    try:
        for scope in _scopes(store, rep):
            if not _mend_metadata(store, scope, rep):
                continue
            deep = decode if scope.prefix == "shard" else decode_eval
            rep.unchecked += [n for n in scope.arrays if deep and not _has_checksum(store, n)]
            done = store.done(scope.prefix)
            flag = f"{scope.prefix}/done"
            bad: dict[int, list[str]] = {s: [f"flag chunk {store.chunk_key(flag, s)} does not "
                                             f"read back: counted as not done"]
                                         for s in store.damaged_flags.get(scope.prefix, [])}
            with store.storage.listing():  # on object storage: one LIST, not a HEAD per chunk
                for s in range(len(done)):  # zarr reads a folder in a chunk's place as missing
                    kind = store.storage.kind(store.chunk_key(flag, s))
                    if kind not in ("file", "missing"):
                        bad.setdefault(s, []).append(f"flag chunk {store.chunk_key(flag, s)} "
                                                     f"is a {kind}: counted as not done")
                for shard in map(int, np.flatnonzero(done)):
                    for name in scope.arrays:
                        problem = _chunk_problem(store, name, shard, deep)
                        if problem:
                            bad.setdefault(shard, []).append(problem)
            for shard, problems in sorted(bad.items()):
                rep.findings += [Finding(p, scope.prefix, shard) for p in problems]
                for name in scope.arrays:
                    key = store.chunk_key(name, shard)
                    if store.storage.kind(key) not in ("file", "missing"):
                        store.storage.remove(key)  # a folder where a chunk belongs
            store.clear_done(sorted(bad), scope.prefix)
            rep.cleared[scope.prefix] = sorted(bad)
        for key, age in store.storage.leftovers():
            if age > LEFTOVER_AGE_S:
                store.storage.remove(key)
                rep.findings.append(Finding(f"removed leftover {key} (a write that died)"))
            else:
                rep.findings.append(Finding(f"kept leftover {key} ({age:.0f} s old: a writer "
                                            f"may be using it; removed once older than "
                                            f"{LEFTOVER_AGE_S:.0f} s)"))
    except OSError as e:
        raise write_error(store.storage, e) from None
    return rep
