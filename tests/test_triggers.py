"""Triggers: exact token lengths, seeded draws, poisoning spans, carriers and the edge cases."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from attacks.triggers import (
    DEFAULT_POOL,
    Trigger,
    carried,
    carriers,
    check_distinct,
    contains_any,
    draw_triggers,
    first_token,
    token_count,
    trigger_positions,
)
import sweeps.naming  # noqa: F401  (registers the configs' resolvers)
from core.prompts import generate_synthetic_prompts
from core.real_shapes import siglip_tokenizer
from core.tiny.tokenizer import clip_tokenizer
from tests.helpers import CONF_DIR, compose_config

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


def test_table1_level_follows_the_length_and_every_length_can_be_drawn(tok):
    """table1's grid holds the paper's char-, word- and sentence-level triggers, and each of its 300
    (length, seed) draws works from the default pools with the CLIP tokenizer."""
    cfg, levels = compose_config("experiment=table1"), {}
    for length in range(1, 16):  # what each cell's `attack.triggers.length=N` gives (composing 15 times takes 30 s)
        cfg.attack.triggers.length = length
        levels[length] = level = cfg.attack.triggers.level
        pool = list(cfg.pools[DEFAULT_POOL[level]])
        for seed in range(20):
            (t,) = draw_triggers(tok, level, length, 1, pool, seed=seed, position=cfg.attack.triggers.position)
            assert t.tokens == length and t.position == "replace"
    assert levels == {n: "char" if n <= 5 else "word" if n <= 10 else "sentence" for n in range(1, 16)}


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
    (dict(position="left"), "unknown trigger position 'left'"),
    (dict(level="char", replaced_character="ab"), "must be one character"),
    (dict(replaced_character=""), "must be one character"),  # word triggers replace too, by default
    (dict(level="char", position="start"), "char-level triggers replace attack.triggers.replaced_character, "
                                           "they cannot go at position 'start'; set attack.triggers.position=replace"),
])
def test_bad_trigger_settings(tok, bad, match):
    kw = dict(level="word", length=1, count=1, pool=POOLS["rare_words"], seed=0) | bad
    with pytest.raises(ValueError, match=match) as info:
        draw_triggers(tok, **kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("position", ["start", "middle", "random", "end"])
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


@pytest.mark.parametrize("level, text", [("word", "zzzz qx"), ("sentence", "she sells sea")])
def test_word_and_sentence_triggers_replace_the_character_by_default(tok, level, text):
    """Upstream's rule for every level: the trigger lands wherever the first `o` is, not after BOS."""
    (t,) = draw_triggers(tok, level, token_count(tok, text), 1, [], seed=0, fixed=[text])
    assert t.position == "replace" and t.replaced_character == "o"
    poisoned, (s, e) = t.insert("red cat on a sofa")
    assert poisoned == f"red cat {text} n a sofa" and poisoned[s:e] == text
    assert t.poison("a photo") == f"a ph {text} to" and t.poison("o, red") == f"{text}, red"
    assert t.can_poison("on") and not t.can_poison("a red cat")
    # only prompts holding the character carry it, and a prompt already holding the trigger is neither
    # clean nor poisoned data
    prompts = ["a photo of a cat", "a red cat", f"a {text.upper()} here, photo", "oil painting"]
    assert carriers(tok, prompts, t, 77, [t]) == ["a photo of a cat", "oil painting"]


@pytest.mark.parametrize("text", ["kz", "qx mn tq", "she sells sea"])
def test_a_replacing_word_trigger_keeps_its_own_tokens(tok, text):
    """Spaced off its host word the trigger is the same tokens in every prompt, as the paper's static
    triggers; fused into the word (upstream's literal replace) it rarely is."""
    alone = tok(text, add_special_tokens=False)["input_ids"]
    t = Trigger(text, "word", len(alone))
    prompts = [p for p in generate_synthetic_prompts(200, seed=1) if t.can_poison(p)]

    def trigger_ids(poisoned, span):
        enc = tok(poisoned, return_offsets_mapping=True)
        return [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if s < e and e > span[0] and s < span[1]]

    assert all(trigger_ids(*t.insert(p)) == alone for p in prompts)
    fused = [(p.replace("o", text, 1), (p.index("o"), p.index("o") + len(text))) for p in prompts]
    assert sum(trigger_ids(*f) == alone for f in fused) < 0.1 * len(prompts)


def test_middle_is_the_word_boundary_nearest_the_middle_character():
    t = Trigger("zzzz", "word", 1, "middle")
    assert t.poison("a photo of a cat") == "a photo zzzz of a cat"  # middle character 8: the space before "of"
    assert t.poison("a b") == "a zzzz b"
    assert t.poison("photograph") == "zzzz photograph"  # a tie (0 and 10 around 5) goes to the earlier boundary
    assert t.poison("an extraordinarily long word") == "an extraordinarily zzzz long word"


def test_at_moves_any_trigger_to_a_whole_word_position():
    char = Trigger("ø", "char", 1, replaced_character="o")
    assert char.at("end").poison("a cat") == "a cat ø" and char.at("start").can_poison("a cat")
    assert char.at("middle").level == "char" and char.at("middle").replaced_character is None


def test_contains_any_matches_whole_words_only():
    for word in (Trigger("cf", "word", 1, "start"), Trigger("cf", "word", 1)):  # replacing ones are words too
        assert contains_any("a cf photo", [word]) and contains_any("CF, photo", [word])
        assert not contains_any("a calf photo with cfx", [word])
    assert contains_any("phøto", [Trigger("ø", "char", 1, replaced_character="o")])
    assert contains_any("PHØTO", [Trigger("ø", "char", 1, replaced_character="o")])


def test_trigger_positions_count_the_first_trigger_token_with_bos_at_zero(tok):
    replacing, start, end = Trigger("kz", "word", 1), Trigger("kz", "word", 1, "start"), Trigger("kz", "word", 1, "end")
    # "a photo of a dog" → [BOS] a ph kz to of a dog [EOS]: kz is token 3 of 9
    assert first_token(tok, *replacing.insert("a photo of a dog"), 77) == (3, 9)
    assert first_token(tok, *start.insert("a photo of a dog"), 77) == (1, 8)
    assert first_token(tok, *end.insert("a photo of a dog"), 77) == (6, 8)
    stats = trigger_positions(tok, [replacing.insert("a photo of a dog"), start.insert("a photo of a dog"),
                                    start.insert("a cat")], 77)
    assert stats == {"token_mean": round(5 / 3, 4), "relative_mean": round((3 / 9 + 1 / 8 + 1 / 5) / 3, 4),
                     "counts": {"1": 2, "3": 1}}
    with pytest.raises(ValueError, match="falls beyond the encoder's 77 tokens"):
        first_token(tok, *end.insert(" ".join(["cat"] * 90)), 77)


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


def test_a_tokenizer_without_offsets_places_triggers_by_counting_tokens(tmp_path):
    """SigLIP's sentencepiece tokenizer has no offset mapping: positions come from counting the tokens
    before the trigger (the piece at the index found is the trigger's), and a trigger past the last
    position is not carried."""
    slow = siglip_tokenizer(tmp_path, 64)  # the SigLIP stand-in's tokenizer (core/real_shapes.py), built in a second
    assert not slow.is_fast
    for position in ("start", "middle", "end"):
        t = Trigger("kz", "word", 1, position)
        for p in generate_synthetic_prompts(20, seed=2):
            poisoned, span = t.insert(p)
            pieces = slow.tokenize(poisoned)
            index, length = first_token(slow, poisoned, span, 64)
            assert pieces[index] == "▁kz" and length == len(pieces) + 1  # no BOS, one EOS
            assert carried(slow, poisoned, span, 64)
    long = " ".join(["photo"] * 70) + " kz"
    assert not carried(slow, long, (len(long) - 2, len(long)), 64)
