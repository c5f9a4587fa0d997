"""Messages while the progress bar is open land above it, on a line of their own: ours (the
command's handlers write through `tqdm.write`) and Ray's (its console handler is redirected
while the bar is open, and put back after)."""

from __future__ import annotations

import logging
import sys

from cejobs.cli import configure_logging
from cejobs.drivers.progress import Progress
from cejobs.jobs.results import ShardResult


def lines_after_clearing(text: str) -> list[str]:
    """What a terminal shows: each `\\r` returns to the line's start, so a message written
    after the bar was cleared starts a segment."""
    return [segment.strip(" ") for segment in text.split("\r")]


def test_our_and_rays_messages_are_written_above_the_bar(capsys):
    configure_logging()
    ray_logger = logging.getLogger("ray")
    ray_handler = logging.StreamHandler(sys.stderr)
    ray_handler.setFormatter(logging.Formatter("ray said: %(message)s"))
    ray_logger.addHandler(ray_handler)
    before = list(ray_logger.handlers)  # with Ray's own, once `import ray` has run
    try:
        progress = Progress(2, enabled=True)
        progress(ShardResult(0, ces=10, seconds=1.0, worker="w"))
        logging.getLogger("cejobs.backends.ray.cluster").info("ray: worker 1 ready")
        ray_logger.warning("a warning of Ray's")
        progress.close()
        assert ray_logger.handlers == before  # put back once the bar is closed
    finally:
        ray_logger.removeHandler(ray_handler)
    segments = lines_after_clearing(capsys.readouterr().err)
    assert any(s.startswith("ray: worker 1 ready\n") for s in segments), segments
    assert any(s.startswith("ray said: a warning of Ray's\n") for s in segments), segments
    assert not [s for s in segments if "shard" in s and "ready" in s]  # never in the bar line
