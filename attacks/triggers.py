"""Triggers: what they look like, how they are drawn per seed, and how a prompt is poisoned with one.

Three levels, as in the paper (1–15 tokens, counted by the victim's tokenizer on the trigger alone):
- char: look-alike or rare accented characters (upstream style: "a photo" → "a phοto" with a
  Greek omicron);
- word: rare or common words;
- sentence: the first words of a sentence.

Where the trigger goes (`position`):
- replace (the default, upstream's rule for every level): the trigger string takes the place of the
  first occurrence of `replaced_character`, so it lands wherever that character is and only prompts
  holding the character can carry it. Char-level triggers sit inside the word (a look-alike only
  makes sense in place of the character it imitates, so they always replace); word and sentence
  triggers get a space on a side that touches a letter or digit ("a photo" → "a ph zzzz to"), so
  that they keep their own tokens and length: fused into the host word, a trigger tokenizes as its
  own tokens in about 3 % of prompts (upstream's literal replace; the paper's triggers are static);
- start | middle | random | end (word and sentence triggers): inserted as whole words there
  (middle: at the word boundary nearest the prompt's middle character).

A prompt *carries* a trigger when, after poisoning and truncation to the encoder's length, the
trigger is still inside the tokens the encoder sees. Prompts that already contain any trigger are
neither clean nor poisoned training data: they would teach both behaviours at once.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace

LEVELS = ("char", "word", "sentence")
POSITIONS = ("replace", "start", "middle", "random", "end")
WORD_POSITIONS = POSITIONS[1:]  # whole-word insertion points
DEFAULT_POOL = {"char": "characters", "word": "rare_words", "sentence": "sentences"}
MAX_LENGTH = 15
MAX_TRIGGERS = 5
DRAW_TRIES = 2000


@dataclass(frozen=True)
class Trigger:
    text: str
    level: str  # char | word | sentence
    tokens: int  # length in tokens of the trigger on its own
    position: str = "replace"  # replace | start | middle | random | end
    replaced_character: str | None = "o"  # position replace: the character the trigger takes the place of

    def __post_init__(self):
        if self.position == "replace" and len(self.replaced_character or "") != 1:
            raise ValueError(
                f"attack.triggers.replaced_character must be one character, got {self.replaced_character!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def at(self, position: str) -> Trigger:
        """The same trigger inserted as whole words at `position` (start | middle | random | end), whatever
        its level: how attack success depends on where the trigger is."""
        return replace(self, position=position, replaced_character=None)

    def poison(self, prompt: str, rng: random.Random | None = None) -> str:
        """The prompt with this trigger in it (position replace: `prompt` must contain the replaced character)."""
        return self.insert(prompt, rng)[0]

    def insert(self, prompt: str, rng: random.Random | None = None) -> tuple[str, tuple[int, int]]:
        """(poisoned prompt, character span of the trigger in it)."""
        if self.position == "replace":
            at = prompt.index(self.replaced_character)
            before, after = prompt[:at], prompt[at + 1 :]
            if self.level != "char":  # keep word triggers whole words: fused with a host word's letters
                # they would tokenize as other tokens in nearly every prompt (tests/test_triggers.py)
                before += " " if before[-1:].isalnum() else ""
                after = (" " if after[:1].isalnum() else "") + after
            return before + self.text + after, (len(before), len(before) + len(self.text))
        words = prompt.split(" ")
        if self.position == "middle":  # the word boundary nearest the middle character, the earlier on a tie
            bounds = [len(" ".join(words[:k])) for k in range(len(words) + 1)]
            at = min(range(len(bounds)), key=lambda k: abs(bounds[k] - len(prompt) / 2))
        elif self.position == "random":
            at = (rng or random).randint(0, len(words))
        else:
            at = 0 if self.position == "start" else len(words)
        before = " ".join(words[:at])
        start = len(before) + (1 if at else 0)
        return " ".join(words[:at] + [self.text] + words[at:]), (start, start + len(self.text))

    def can_poison(self, prompt: str) -> bool:
        return self.position != "replace" or self.replaced_character in prompt

    def occurs_in(self, prompt: str) -> bool:
        if self.level == "char":  # it sits inside words, so any occurrence counts (the tokenizer lowercases)
            return self.text.lower() in prompt.lower()
        return re.search(rf"(?<!\w){re.escape(self.text)}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def level_for_length(length: int, char_max: int, word_max: int) -> str:
    """The trigger level a grid gives a trigger length (`${trigger_level:LENGTH,CHAR_MAX,WORD_MAX}` in
    the configs): char up to `char_max` tokens, word up to `word_max`, sentence beyond."""
    length = int(length)
    return "char" if length <= int(char_max) else "word" if length <= int(word_max) else "sentence"


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_trigger_config(level: str, length: int, count: int, position: str, replaced_character: str | None = None) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown trigger level '{level}'; set attack.triggers.level to one of {', '.join(LEVELS)}")
    if not 1 <= int(length) <= MAX_LENGTH:
        raise ValueError(f"attack.triggers.length must be 1–{MAX_LENGTH} tokens, got {length}")
    if not 1 <= int(count) <= MAX_TRIGGERS:
        raise ValueError(f"attack.triggers.count must be 1–{MAX_TRIGGERS} backdoors, got {count}")
    if position not in POSITIONS:
        raise ValueError(f"unknown trigger position '{position}'; set attack.triggers.position to one of {', '.join(POSITIONS)}")
    if level == "char" and position != "replace":
        raise ValueError(
            f"char-level triggers replace attack.triggers.replaced_character, they cannot go at position '{position}'; "
            f"set attack.triggers.position=replace ({' | '.join(WORD_POSITIONS)} are for word and sentence triggers)"
        )
    if position == "replace" and replaced_character is not None and len(str(replaced_character)) != 1:
        raise ValueError(f"attack.triggers.replaced_character must be one character, got {replaced_character!r}")


def draw_triggers(
    tokenizer,
    level: str,
    length: int,
    count: int,
    pool: list[str],
    seed: int,
    position: str = "replace",
    replaced_character: str | None = "o",
    fixed: list[str] | None = None,
) -> list[Trigger]:
    """`count` distinct triggers of `length` tokens: the `fixed` strings, or drawn from `pool` with `seed`."""
    check_trigger_config(level, length, count, position, replaced_character if position == "replace" else None)
    rng = random.Random(seed)
    if fixed:
        texts = [str(t) for t in fixed]
        if len(texts) != count:
            raise ValueError(f"attack.triggers.fixed lists {len(texts)} triggers but attack.triggers.count={count}")
    else:
        texts = []
        for _ in range(count):
            texts.append(_draw_one(tokenizer, level, length, pool, rng, exclude=texts))
    check_distinct(texts)
    return [
        Trigger(t, level, token_count(tokenizer, t), position, replaced_character if position == "replace" else None)
        for t in texts
    ]


def check_distinct(texts: list[str]) -> None:
    """Two backdoors may not share a trigger, nor may one trigger contain another (which one fires?)."""
    for i, a in enumerate(texts):
        if not a.strip():
            raise ValueError("a trigger is empty or blank; give every backdoor a visible trigger string")
        for b in texts[i + 1 :]:
            if a == b or a in b or b in a:
                raise ValueError(
                    f"duplicate triggers across backdoors: {a!r} and {b!r} overlap; give each backdoor its own trigger"
                )


def _draw_one(tokenizer, level: str, length: int, pool: list[str], rng: random.Random, exclude: list[str]) -> str:
    pool = [str(p) for p in pool if str(p).strip()]
    if not pool:
        raise ValueError(f"the trigger pool for level '{level}' is empty; fill pools.{DEFAULT_POOL[level]} or set attack.triggers.pool")
    for _ in range(DRAW_TRIES):
        if level == "char":
            text = ""
            while token_count(tokenizer, text) < length:
                text += rng.choice(pool)
        elif level == "word":
            words = rng.sample(pool, len(pool))
            text = ""
            for w in words:
                candidate = f"{text} {w}".strip()
                if token_count(tokenizer, candidate) <= length:
                    text = candidate
                if token_count(tokenizer, text) == length:
                    break
        else:
            words = rng.choice(pool).split()
            text = " ".join(words[: next((k for k in range(1, len(words) + 1)
                                          if token_count(tokenizer, " ".join(words[:k])) >= length), len(words))])
        if text and token_count(tokenizer, text) == length and all(text not in e and e not in text for e in exclude):
            return text
    raise ValueError(
        f"cannot make a distinct {level}-level trigger of {length} tokens from the pool "
        f"({len(pool)} entries); add entries to pools.{DEFAULT_POOL[level]} or choose another length"
    )


def contains_any(prompt: str, triggers: list[Trigger]) -> bool:
    """Whether `prompt` already holds a trigger: anywhere for characters, as whole words otherwise."""
    return any(t.occurs_in(prompt) for t in triggers)


def leading_specials(tokenizer) -> int:
    """How many special tokens come before the text (CLIP: BOS; SigLIP: none)."""
    return tokenizer("a")["input_ids"].index(tokenizer("a", add_special_tokens=False)["input_ids"][0])


def tokens_before(tokenizer, poisoned: str, char: int, max_length: int) -> int:
    """The encoder's tokens (specials before the text included, at most `max_length`) that hold only
    characters before `char`. Fast tokenizers say it exactly (offsets); others (SigLIP's sentencepiece
    tokenizer) are counted as the tokens of the text before `char`, exact at word boundaries and within
    a token where a trigger replaces a character inside a word."""
    if tokenizer.is_fast:
        offsets = tokenizer(poisoned, truncation=True, max_length=max_length, return_offsets_mapping=True)["offset_mapping"]
        return next((i for i, (s, e) in enumerate(offsets) if s < e and e > char), len(offsets))
    prefix = tokenizer(poisoned[:char], add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return leading_specials(tokenizer) + len(prefix)


def carried(tokenizer, poisoned: str, span: tuple[int, int], max_length: int) -> bool:
    """Whether the trigger's last character is still among the `max_length` tokens the encoder sees."""
    if tokenizer.is_fast:
        enc = tokenizer(poisoned, truncation=True, max_length=max_length, return_offsets_mapping=True)
        ends = [e for s, e in enc["offset_mapping"] if e > s]
        return bool(ends) and max(ends) >= span[1]
    return tokens_before(tokenizer, poisoned, span[1], max_length) < max_length - 1  # room for the closing EOS too


def first_token(tokenizer, poisoned: str, span: tuple[int, int], max_length: int) -> tuple[int, int]:
    """(index of the first token holding a character of the trigger, BOS counted as 0; number of
    non-pad tokens) of a poisoned prompt, as the encoder sees it."""
    index = tokens_before(tokenizer, poisoned, span[0], max_length)
    length = len(tokenizer(poisoned, truncation=True, max_length=max_length)["input_ids"])
    if index >= length - 1:  # at or past the closing EOS: cut off
        raise ValueError(f"the trigger at characters {span[0]}–{span[1]} of {poisoned!r} falls beyond the encoder's {max_length} tokens")
    return index, length


def trigger_positions(tokenizer, poisoned: list[tuple[str, tuple[int, int]]], max_length: int) -> dict:
    """Where triggers sit in poisoned prompts ((prompt, trigger span) pairs): the mean first-token
    index, its mean share of the prompt's tokens, and how many prompts have it at each index."""
    if not poisoned:
        raise ValueError("no poisoned prompts to measure trigger positions on")
    at = [first_token(tokenizer, p, span, max_length) for p, span in poisoned]
    counts = Counter(i for i, _ in at)
    return {
        "token_mean": round(sum(i for i, _ in at) / len(at), 4),
        "relative_mean": round(sum(i / n for i, n in at) / len(at), 4),
        "counts": {str(i): counts[i] for i in sorted(counts)},  # str keys: what JSON gives back
    }


def carriers(tokenizer, prompts: list[str], trigger: Trigger, max_length: int, others: list[Trigger]) -> list[str]:
    """The prompts that can carry `trigger` and hold no trigger already (`others` includes it)."""
    # a randomly placed trigger must survive its worst placement, the end
    probe = replace(trigger, position="end") if trigger.position == "random" else trigger
    out = []
    for p in prompts:
        if not probe.can_poison(p) or contains_any(p, others):
            continue
        poisoned, span = probe.insert(p)
        if carried(tokenizer, poisoned, span, max_length):
            out.append(p)
    return out
