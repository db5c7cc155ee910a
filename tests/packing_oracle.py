"""Test oracle and benchmark peer for the packers: a textbook O(n * bins) first-fit-decreasing."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def naive_first_fit_decreasing(lengths: Sequence[int], capacity: int, num_images: Sequence[int] | None = None,
                               image_tokens: Sequence[int] | None = None, max_images_per_pack: int | None = None,
                               max_image_tokens_per_pack: int | None = None) -> np.ndarray:
    """Textbook O(n * bins) FFD (the shape of Open-Qwen2VL's Algorithm 1 and NeMo's packer); the
    oracle the fast versions are tested against, and a benchmark peer."""
    arr = np.asarray(lengths, dtype=np.int64)
    n = arr.size
    imgs = np.zeros(n, np.int64) if num_images is None else np.asarray(num_images, np.int64)
    toks = np.zeros(n, np.int64) if image_tokens is None else np.asarray(image_tokens, np.int64)
    ma = max_images_per_pack if max_images_per_pack is not None else 1 << 62
    mt = max_image_tokens_per_pack if max_image_tokens_per_pack is not None else 1 << 62
    if max_images_per_pack is None and max_image_tokens_per_pack is None:
        order = sorted(range(n), key=lambda i: (-arr[i], i))
    else:
        order = sorted(range(n), key=lambda i: (-arr[i], -toks[i], -imgs[i], i))
    room: list[list[int]] = []
    out = np.zeros(n, dtype=np.int64)
    for i in order:
        L, a, t = int(arr[i]), int(imgs[i]), int(toks[i])
        for b, (r, ra, rt) in enumerate(room):
            if L <= r and a <= ra and t <= rt:
                room[b] = [r - L, ra - a, rt - t]
                out[i] = b
                break
        else:
            room.append([capacity - L, ma - a, mt - t])
            out[i] = len(room) - 1
    return out
