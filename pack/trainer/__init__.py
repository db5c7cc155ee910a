"""Trainer-side reading: the resumable loader over packed shards, collation, M-RoPE positions, pixel values,
attention masks and the packed loss — and the tiny demo training that proves them."""
