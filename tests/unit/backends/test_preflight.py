"""Resources checked before a store is touched: the SLURM partition's GPU gres, read from
`sinfo -h -o "%P|%G"` output."""

from __future__ import annotations

import pytest

from cejobs.backends.slurm import check_partition_gpus
from cejobs.errors import ConfigError

SINFO = "debug*|gpu:2\ncpu|(null)\nmixed|(null)\nmixed|gpu:a100:4\n"


@pytest.mark.parametrize("partition", [None, "debug", "mixed"])
def test_partitions_with_gpus_pass(partition):
    assert check_partition_gpus(SINFO, partition, gpus=1) is None


def test_partition_without_gpus_is_one_line():
    with pytest.raises(ConfigError) as e:
        check_partition_gpus(SINFO, "cpu", gpus=1)
    assert str(e.value) == ("--slurm-gpus 1, but the SLURM partition cpu has no GPUs (gres "
                            "(null)); use --slurm-gpus 0 for CPU tasks, or --partition with "
                            "GPU nodes")


def test_default_partition_without_gpus_and_unknown_partition():
    with pytest.raises(ConfigError, match="the SLURM partition cpu has no GPUs"):
        check_partition_gpus("cpu*|(null)\n", None, gpus=2)
    with pytest.raises(ConfigError) as e:
        check_partition_gpus(SINFO, "nosuch", gpus=1)
    assert str(e.value) == "no SLURM partition 'nosuch' (sinfo lists cpu, debug, mixed)"
