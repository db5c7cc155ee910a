"""Demo data and test fixtures, outside the product packages: the bundled sample corpus (`python -m
demo_data.sample`), OCR text images, videos, the seed recipes synthetic corpora, planted duplicates and
clusters, the grounding demo and a tiny MLLM built from a config (no weights downloaded)."""
