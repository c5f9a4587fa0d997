"""The evaluation worker: loads each classifier once, then writes their softmax outputs shard by
shard into `eval/<name>/` of one store (docs/design.md §8).

A shard reads its rows of `source/x` and `ce/x` (one chunk each), runs every classifier whose
`eval/<name>/done` flag is not set, and writes that classifier's rows, then its flag. The same
class runs in-process, in a Ray actor and in a SLURM task.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cejobs.devices import resolve_device
from cejobs.store.layout import eval_prefix
from cejobs.store.store import CEStore
from cejobs.hosts import worker_name
from cejobs.jobs.results import ShardError, ShardResult
from cejobs.jobs.tasks import ShardTask
from cejobs.jobs.worker_inputs import WorkerInputs, load_classifier_from


class EvaluateWorker:
    """task.options["classifiers"]: name -> {"path", "sha256", "spec"}; `run_shard(s)` evaluates
    shard s."""

    def __init__(self, task: ShardTask, device: str | None = None,
                 inputs: WorkerInputs | None = None):  # the driver's checkpoints (Ray)
        self.device = resolve_device(device or task.config.device)
        self.batch_size = task.config.batch_size
        self.store = CEStore.open(task.store)
        self.classifiers: dict[str, torch.nn.Module] = {}
        lay = self.store.layout
        for name, spec in task.options["classifiers"].items():
            ckpt = load_classifier_from(inputs, spec.get("spec") or spec["path"], spec["path"],
                                        tuple(lay.image_shape), lay.num_classes)
            expected = str(self.store.classifier_sha256(name))
            if ckpt.sha256 != expected:
                raise ShardError(f"classifier {name} on {worker_name()} has sha256 "
                                 f"{ckpt.sha256[:12]}, {eval_prefix(name)} was made with "
                                 f"{expected[:12]}")
            self.classifiers[name] = ckpt.model.to(self.device).eval()

    def _flag(self, prefix: str, shard: int) -> bool:
        return bool(self.store.array(f"{prefix}/done")[shard])  # one chunk, fresh from disk

    @torch.inference_mode()
    def _softmax(self, net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        """(n, C, H, W) images in [0, 1] -> (n, classes) float32 softmax, in batches."""
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = torch.from_numpy(x[i:i + self.batch_size]).to(self.device, torch.float32)
            out.append(torch.softmax(net(xb).float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    def run_shard(self, shard: int) -> ShardResult:
        started_at, t0 = time.time(), time.perf_counter()
        if not self._flag("shard", shard):
            raise ShardError(f"shard {shard}: its generation is not done")
        todo = [n for n in self.classifiers if not self._flag(eval_prefix(n), shard)]
        if not todo:
            return ShardResult(shard, seconds=time.perf_counter() - t0, worker=worker_name())
        rows = self.store.layout.rows(shard)
        try:
            source_x = self.store.read_rows("source/x", rows)
            ce_x = self.store.read_rows("ce/x", rows)  # (n, K, C, H, W), float32 or float16
        except Exception as e:  # noqa: BLE001 - damaged generation chunks (e.g. checksum)
            why = "a checksum fails" if "checksum" in str(e) else type(e).__name__
            raise ShardError(f"shard {shard}: its generation chunks do not read back ({why}); "
                             f"run python -m cejobs.status --store {self.store.storage} --verify, "
                             f"then generate, to redo it") from None
        n, k = ce_x.shape[:2]
        images = np.concatenate([source_x, ce_x.reshape(n * k, *ce_x.shape[2:])]
                                ).astype(np.float32, copy=False)
        write_seconds = 0.0
        for name in todo:
            prob = self._softmax(self.classifiers[name], images)
            prefix = eval_prefix(name)
            data = {f"{prefix}/source_prob": prob[:n],
                    f"{prefix}/ce_prob": prob[n:].reshape(n, k, -1)}
            write_seconds += self.store.write_shard(shard, data, prefix=prefix,
                                                    started_at=started_at)
        return ShardResult(shard, ces=n * k * len(todo), seconds=time.perf_counter() - t0,
                           write_seconds=write_seconds, worker=worker_name())
