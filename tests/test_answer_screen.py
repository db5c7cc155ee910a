"""The vectorised conversation screen (curate.filters.answer_screen): text_filter's verdicts, reasons
and details are the same with and without it, on generated conversations, and it clears ordinary
answers (grounding markup included)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.filters import text_rules as TR
from curate.filters.answer_screen import answers_cleared
from tests.test_text_screen import CONVERSATIONS, DEFAULT, captions, thresholds

MARKUP = ["<|object_ref_start|>dog<|object_ref_end|><|box_start|>(010,020),(300,400)<|box_end|>", "<image>",
          "<image>\n", "<video>", "<ref>", "</box>", "<|im_start|>", "<|x|>", "<b", "a|b", "\n", "é", "\x1c"]
answer = st.one_of(st.none(), captions(), st.lists(st.one_of(captions(), st.sampled_from(MARKUP)), max_size=4)
                   .map("".join))
turn = st.one_of(st.none(), st.fixed_dictionaries({
    "role": st.one_of(st.none(), st.sampled_from(["user", "assistant", "assistant", "system"])), "content": answer}))


@settings(max_examples=300, deadline=None)
@given(convs=st.lists(st.one_of(st.none(), st.lists(turn, max_size=4)), min_size=1, max_size=20),
       texts=st.lists(st.one_of(st.none(), st.just(""), st.just(" "), captions()), min_size=20, max_size=20),
       th=thresholds, boilerplate=st.booleans())
def test_property_screened_conversation_verdicts_equal_the_rules(convs, texts, th, boilerplate):
    batch = pa.table({"text": pa.array(texts[:len(convs)], pa.string()),
                      "conversations": pa.array(convs, CONVERSATIONS)})
    # a null turn makes check_sample fail loudly (a bug upstream, not bad input): those rows are left out
    batch = batch.filter(pa.array([c is None or all(t is not None for t in c) for c in convs]))
    plain = TR.batch_verdicts(batch, th, boilerplate, screen=False)
    assert TR.batch_verdicts(batch, th, boilerplate, screen=True) == plain
    sure = answers_cleared(batch.column("text"), batch.column("conversations"), th, boilerplate)
    assert all(plain[i] is None for i in np.flatnonzero(sure))


def test_the_screen_clears_ordinary_answers():
    convs = [[{"role": "user", "content": "<image>\nWhere is the dog?"},
              {"role": "assistant", "content": MARKUP[0]}],
             [{"role": "user", "content": "What is on the table?"},
              {"role": "assistant", "content": "A red cup next to an open book and a pair of glasses."}],
             [{"role": "user", "content": "q"}, {"role": "assistant", "content": "buy now buy now buy now buy now"}],
             [{"role": "user", "content": "q"}]]
    batch = pa.table({"text": pa.array([None] * 4, pa.string()), "conversations": pa.array(convs, CONVERSATIONS)})
    assert answers_cleared(batch.column("text"), batch.column("conversations"), DEFAULT).tolist() == \
        [True, True, False, False]
    assert [d and d.reason for d in TR.batch_verdicts(batch, DEFAULT)] == \
        [None, None, "text:repeated_ngrams", "text:empty"]
