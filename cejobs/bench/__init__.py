"""Benchmarks: speed and memory, measured (`python -m cejobs.bench`; docs/performance.md).

One module per topic: sampler.py (the sampler, eager and fast, and the fast path's check),
fusion.py, train.py, generate.py (the CE maker end to end), runs.py (whole generate runs:
scaling, memory), load.py (runs beside CPU burners), store.py and s3.py (store writes, object
storage, a store of many shards), steps.py (CE quality at fewer steps); common.py holds the
timing and device helpers they share. `__main__.py` is the command line.
"""
