"""The method: its parameters, the SDE, the neighbourhood scores, the noise, the samplers and
the distances.

Pure functions of tensors, with no knowledge of stores, shards or backends (docs/math.md); it
sets no environment variables. `params.py` holds every parameter's default;
`cejobs.jobs.methods` says, per `--method`, which checkpoint it needs and how its CEs are made.
"""
