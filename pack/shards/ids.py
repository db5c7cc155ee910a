"""input_ids and labels of one packed segment, consistent with the num_tokens the pack plan used.

A disagreement is a setup error (tokenizer or template differ from count_tokens'), never a bad
sample: ``TokenCountMismatch`` stops the run instead of quarantining everything.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pack.packformat import IGNORE_INDEX


class TokenCountMismatch(RuntimeError):
    """input_ids disagree with the planned num_tokens: a setup error (tokenizer or template differ from
    count_tokens'), not a bad sample — the run stops instead of quarantining everything."""


class SegmentTokenizer:
    """input_ids of one segment, consistent with the num_tokens the pack plan used."""

    def __init__(self, spec: str, template: Mapping[str, Any] | None = None):
        """`spec`: "builtin" (the shipped Qwen tokenizer) or a tokenizer directory; `template`: the
        pack.tokens.Template fields count_tokens used."""
        from pack import tokens as T
        self.T = T
        self.tokenizer = T.load_tokenizer(None if spec == "builtin" else spec)
        self.template = T.Template(**dict(template)) if template else T.Template()
        self.vision_ids = {self._id(t) for t in (T.VISION_START, T.VISION_END, T.IMAGE_PAD, T.VIDEO_PAD)} - {None}
        self.structure_ids = {self._id(t) for t in (T.IM_START, T.IM_END, T.EOS)} - {None}
        pad = self._id(T.EOS)
        self.pad_id = int(pad) if pad is not None else 0
        self.image_token_id, self.video_token_id = self._id(T.IMAGE_PAD), self._id(T.VIDEO_PAD)

    def _id(self, token: str) -> int | None:
        try:
            return self.tokenizer.token_id(token)
        except KeyError:
            return None

    def ids(self, seg: Mapping[str, Any], image_tokens: Sequence[int], video_tokens: Sequence[int]
            ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of one segment, int32; labels are the ids where the template trains and
        ``IGNORE_INDEX`` elsewhere — always at the segment's first token, which no token of this
        sample predicts (the previous one belongs to another sample or is the pack's start)."""
        ids, trained = self.T.sample_ids_and_labels(seg, self.tokenizer, list(image_tokens), list(video_tokens),
                                                    template=self.template)
        want = int(seg["num_tokens"])
        if len(ids) > want and seg.get("truncated_from") is not None:
            keep = self._truncation_keep(ids, want)
            ids = [t for t, k in zip(ids, keep) if k]
            trained = [t for t, k in zip(trained, keep) if k]
        if len(ids) != want:
            raise TokenCountMismatch(f"sample {seg['key']!r}: tokenizer gives {len(ids)} ids but num_tokens is {want} "
                                     "(count_tokens and shards must use the same tokenizer and template)")
        arr = np.asarray(ids, dtype=np.int32)
        labels = np.where(np.asarray(trained, dtype=bool), arr, IGNORE_INDEX).astype(np.int32)
        if labels.size:
            labels[0] = IGNORE_INDEX
        return arr, labels

    def _truncation_keep(self, ids: list[int], want: int) -> list[bool]:
        """Which tokens survive cutting text tokens from the end until `want` remain. Vision tokens are
        never cut (as `pack` plans); turn markers (<|im_start|>, <|im_end|>, <|endoftext|>) only if
        text alone is not enough."""
        keep = [True] * len(ids)
        excess = len(ids) - want
        for protected in (self.vision_ids | self.structure_ids, self.vision_ids):
            for i in range(len(ids) - 1, -1, -1):
                if excess == 0:
                    break
                if keep[i] and ids[i] not in protected:
                    keep[i] = False
                    excess -= 1
        return keep
