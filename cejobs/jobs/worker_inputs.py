"""What a worker would otherwise read from the driver's disk, read once by the driver.

On Ray the workers may share nothing with the driver but the store's URL (a cloud cluster
without a shared filesystem). The driver reads the model files (every file a model is built
from: a checkpoint, a diffusers folder's config and weights, ...) and the dataset of a job
(`JobKind.inputs`), puts them into Ray's object store once, and every actor builds its worker
from them. Sources of a `store:` dataset are read from that store, which workers reach anyway.
Local and SLURM workers run where the driver's files are, and read them themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WorkerInputs:
    checkpoints: dict[str, bytes] = field(default_factory=dict)  # str(path) -> a model file's bytes
    dataset: Any = None  # cejobs.data.ImageDataset, or None: the worker loads it

    @classmethod
    def read(cls, checkpoints: list[str | Path], dataset: Any = None) -> "WorkerInputs":
        from cejobs.errors import CheckpointError

        files = {}
        for path in map(str, checkpoints):
            try:
                files[path] = Path(path).read_bytes()
            except OSError as e:
                raise CheckpointError(f"model file not readable: {path} "
                                      f"({e.strerror or e})") from None
        return cls(files, dataset)

    def checkpoint(self, path: str | Path) -> bytes | None:
        """The bytes of checkpoint `path`, or None when the worker must read it itself."""
        return self.checkpoints.get(str(path))


def load_checkpoint_from(inputs: WorkerInputs | None, path: str | Path, **kwargs):
    """cejobs.models.checkpoint.load_checkpoint, from the driver's bytes when they came."""
    from cejobs.models.checkpoint import load_checkpoint

    return load_checkpoint(path, data=inputs.checkpoint(path) if inputs else None, **kwargs)


def load_classifier_from(inputs: WorkerInputs | None, spec: str, path: str | Path,
                         image_shape: tuple, num_classes: int):
    """cejobs.models.classifiers.load_classifier of `spec`, whose weights file the driver
    found at `path`, from the driver's bytes when they came."""
    from cejobs.models.classifiers import load_classifier

    data = inputs.checkpoint(path) if inputs else None
    return load_classifier(spec, image_shape, num_classes, data=data, path=Path(path))
