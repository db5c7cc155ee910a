"""count_tokens on plain chat conversations column by column (pack.tokens.turn_rows): the lengths of
``sample_input_ids`` (the trainer's ids) and of ``render`` row by row, on generated conversations."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.base import records as R
from pack import tokens as T
from pack.tokens import batch as B

CONTENT = st.one_of(st.none(), st.just(""), st.sampled_from(["Where is the dog?", "  two  spaces ", "\n",
                                                             "<|object_ref_start|>dog<|object_ref_end|><|box_start|>"
                                                             "(010,020),(300,400)<|box_end|>", "<image>\nWhat?",
                                                             "日本語 の テキスト", "a<video>b"]), st.text(max_size=6))
TURN = st.fixed_dictionaries({"role": st.one_of(st.none(), st.sampled_from(["user", "assistant", "system", ""])),
                              "content": CONTENT})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(convs=st.lists(st.one_of(st.none(), st.lists(TURN, max_size=4)), min_size=1, max_size=12),
       images=st.lists(st.integers(0, 2), min_size=12, max_size=12),
       videos=st.lists(st.integers(0, 1), min_size=12, max_size=12),
       template=st.sampled_from([T.Template("chat"), T.Template("plain"), T.Template("chat", system_prompt=None),
                                 T.Template("chat", system_prompt="Be brief.")]))
def test_conversation_lengths_equal_the_trainers(tok, convs, images, videos, template):
    n = len(convs)
    imgs = [[7] * k for k in images[:n]]
    vids = pa.array([[11] * k for k in videos[:n]], pa.list_(pa.int32()))
    table = pa.table({"text": pa.array(["a caption"] * n, pa.string()),
                      "conversations": pa.array(convs, pa.list_(R.TURN))})
    res = T.count_rows(table, tok, pa.array(imgs, pa.list_(pa.int32())), vids, template)
    with pytest.MonkeyPatch.context() as mp:   # every row through render
        mp.setattr(B, "count_turn_rows", lambda rows, *a: np.zeros(len(rows), dtype=bool))
        by_render = T.count_rows(table, tok, pa.array(imgs, pa.list_(pa.int32())), vids, template)
    assert res.num_tokens.tolist() == by_render.num_tokens.tolist()
    assert res.text_tokens.tolist() == by_render.text_tokens.tolist() and res.error == by_render.error
    for i, (conv, ic, vc) in enumerate(zip(convs, imgs, vids.to_pylist())):
        if res.error[i] is None:
            row = {"text": "a caption", "conversations": conv}
            assert res.num_tokens[i] == len(T.sample_input_ids(row, tok, ic, vc, template=template)), (conv, ic)


def test_llava_conversations_with_images_take_the_column_path(tok):
    convs = [[{"role": "user", "content": "<image>\nWhat is in the picture?"}, {"role": "assistant", "content": "A dog."},
              {"role": "user", "content": "And here? <image> and <video>"}, {"role": "assistant", "content": "Cats."}],
             [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "Two 3 <b>."}]]
    imgs, vids = [[64, 100], [256]], [[30], []]
    table = pa.table({"conversations": pa.array(convs, pa.list_(R.TURN))})
    media = B.MediaCounts(np.array([2, 1]), np.array([1, 0]), np.array([164, 256]), np.array([30, 0]))
    num = np.zeros(2, dtype=np.int64)
    pending = B._PendingText()
    done = B.count_turn_rows(np.arange(2), table.column("conversations"), media, T.Template(),
                             lambda s: len(tok.encode(s)), num, pending)
    assert done.tolist() == [True, True]
    num += pending.per_row(tok, 2)
    assert num.tolist() == [len(T.sample_input_ids({"conversations": c}, tok, i, v)) for c, i, v in zip(convs, imgs, vids)]
