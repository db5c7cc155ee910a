"""Clustering stages: ``cluster`` (hierarchical k-means), ``cluster_sample`` (balanced sampling) and
``semantic_dedup`` (near-duplicates by embedding inside clusters). Importing the package registers them."""
from curate.cluster import cluster_stage, sample_stage, semdedup_stage  # noqa: F401  (registration)
