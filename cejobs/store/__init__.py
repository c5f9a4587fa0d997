"""Persistence: where a store lives (storage), its layout, the store itself, its repair policy and the heartbeat lease. Knows no job, method or classifier."""
