"""What backends pass around: a job's task, small and picklable (no models, no data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cejobs.jobs.config import Resources
    from cejobs.jobs.kinds import JobKind


@dataclass(frozen=True)
class ShardTask:
    """What every worker of a job needs: small and picklable."""

    job: JobKind  # what fills the store: cejobs.jobs.kinds.KINDS["generate" | "evaluate"]
    store: str  # store path, on storage every worker shares
    config: Resources  # the validated config of the job (GenerateConfig, EvaluateConfig)
    options: dict[str, Any] = field(default_factory=dict)  # job-kind extras

    @property
    def kind(self) -> str:
        return self.job.name
