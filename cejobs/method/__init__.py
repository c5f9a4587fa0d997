"""The method: the SDE, the neighbourhood scores, the noise, the samplers and the distances.

Pure functions of tensors, with no knowledge of stores, shards or backends (docs/math.md).
`methods.py` says, per `--method`, which checkpoint it needs and how it makes a batch of CEs.
"""
