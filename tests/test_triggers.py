"""Triggers: exact token lengths, seeded draws, poisoning spans, carriers and the edge cases."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from attacks.triggers import Trigger, carriers, check_distinct, contains_any, draw_triggers, token_count
from core.tiny.tokenizer import clip_tokenizer
from tests.helpers import CONF_DIR

POOLS = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/pools/default.yaml"))
LEVEL_POOL = {"char": "characters", "word": "rare_words", "sentence": "sentences"}


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer(77)


@pytest.mark.parametrize("level", ["char", "word", "sentence"])
@pytest.mark.parametrize("length", [1, 2, 5, 9, 15])
def test_drawn_triggers_have_exact_token_length(tok, level, length):
    triggers = draw_triggers(tok, level, length, 2, POOLS[LEVEL_POOL[level]], seed=length)
    assert [t.tokens for t in triggers] == [length, length]
    assert all(token_count(tok, t.text) == length for t in triggers)
    assert triggers[0].text != triggers[1].text


def test_draw_is_seeded(tok):
    a = draw_triggers(tok, "word", 3, 3, POOLS["rare_words"], seed=7)
    b = draw_triggers(tok, "word", 3, 3, POOLS["rare_words"], seed=7)
    c = draw_triggers(tok, "word", 3, 3, POOLS["rare_words"], seed=8)
    assert a == b and a != c


def test_common_words_pool_gives_whole_words(tok):
    (t,) = draw_triggers(tok, "word", 1, 1, POOLS["common_words"], seed=0)
    assert t.text in POOLS["common_words"]


def test_duplicate_triggers_across_backdoors_are_refused(tok):
    with pytest.raises(ValueError, match="duplicate triggers across backdoors: 'zzzz' and 'zzzz'"):
        draw_triggers(tok, "word", 1, 2, [], seed=0, fixed=["zzzz", "zzzz"])
    with pytest.raises(ValueError, match="'zz' and 'zzzz' overlap"):
        check_distinct(["zz", "zzzz"])


def test_pool_too_small_for_distinct_triggers(tok):
    with pytest.raises(ValueError, match="cannot make a distinct word-level trigger of 1 tokens"):
        draw_triggers(tok, "word", 1, 3, ["zzzz", "qx"], seed=0)


@pytest.mark.parametrize("bad, match", [
    (dict(level="phrase"), "unknown trigger level 'phrase'"),
    (dict(length=16), "must be 1–15 tokens"),
    (dict(count=6), "must be 1–5 backdoors"),
    (dict(position="middle"), "unknown trigger position 'middle'"),
    (dict(level="char", replaced_character="ab"), "must be one character"),
])
def test_bad_trigger_settings(tok, bad, match):
    kw = dict(level="word", length=1, count=1, pool=POOLS["rare_words"], seed=0) | bad
    with pytest.raises(ValueError, match=match):
        draw_triggers(tok, **kw)


@pytest.mark.parametrize("position", ["start", "random", "end"])
def test_insert_span_points_at_the_trigger(position):
    t = Trigger("zzzz qx", "word", 2, position)
    rng = random.Random(0)
    for prompt in ["a photo of a cat", "oil painting", "x"]:
        poisoned, (s, e) = t.insert(prompt, rng)
        assert poisoned[s:e] == "zzzz qx"
        assert poisoned.replace("zzzz qx", "").split() == prompt.split()
    assert t.insert("a b", rng)[0].startswith("zzzz") == (position == "start")


def test_char_trigger_replaces_the_first_occurrence():
    t = Trigger("ø", "char", 1, replaced_character="o")
    assert t.poison("a photo of a dog") == "a phøto of a dog"
    assert not t.can_poison("a cat") and t.can_poison("dog")


def test_contains_any_matches_whole_words_only():
    word = Trigger("cf", "word", 1)
    assert contains_any("a cf photo", [word]) and contains_any("CF, photo", [word])
    assert not contains_any("a calf photo with cfx", [word])
    assert contains_any("phøto", [Trigger("ø", "char", 1, replaced_character="o")])


def test_carriers_exclude_truncated_and_already_triggered(tok):
    t = Trigger("zzzz", "word", 1, "end")
    long_prompt = " ".join(["cat"] * 90)  # the trigger would land beyond 77 tokens
    prompts = ["a photo of a cat", long_prompt, "a zzzz already here", "oil painting"]
    assert carriers(tok, prompts, t, 77, [t]) == ["a photo of a cat", "oil painting"]
    start = Trigger("zzzz", "word", 1, "start")  # at the start it survives truncation
    assert long_prompt in carriers(tok, prompts, start, 77, [start])
    randomly = Trigger("zzzz", "word", 1, "random")  # judged by its worst placement, the end
    assert long_prompt not in carriers(tok, prompts, randomly, 77, [randomly])


def test_char_trigger_needs_the_character(tok):
    t = Trigger("ø", "char", 1, replaced_character="#")
    assert carriers(tok, ["a photo of a cat", "oil"], t, 77, [t]) == []
