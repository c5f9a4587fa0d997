"""The job model: configuration, plan, shard tasks, job kinds, the per-method glue and the workers that fill a store."""
