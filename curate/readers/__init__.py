"""Readers: source declarations, the format readers (JSONL/LLaVA, parquet, WebDataset), bounded file access
(compression, timeouts, image references) and the `ingest` stage. `curate.read_source` is the notebook entry."""
