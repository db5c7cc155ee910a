"""Shard writing: the `shards` stage, its schedule and slot table, the writer, the manifest, and the validator
users run in CI (`mmcurate validate shards`)."""
