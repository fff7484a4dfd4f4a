"""Triggers: what they look like, how they are drawn per seed, and how a prompt is poisoned with one.

Three levels, as in the paper (1–15 tokens, counted by the victim's tokenizer on the trigger alone):
- char: the trigger replaces the first occurrence of a chosen character (upstream style:
  "a photo" → "a phοto" with a Greek omicron); only prompts holding that character can carry it;
- word: rare or common words inserted as whole words;
- sentence: the first words of a sentence, inserted as whole words.

A prompt *carries* a trigger when, after poisoning and truncation to the encoder's length, the
trigger is still inside the tokens the encoder sees. Prompts that already contain any trigger are
neither clean nor poisoned training data: they would teach both behaviours at once.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, replace

LEVELS = ("char", "word", "sentence")
POSITIONS = ("start", "random", "end")
DEFAULT_POOL = {"char": "characters", "word": "rare_words", "sentence": "sentences"}
MAX_LENGTH = 15
MAX_TRIGGERS = 5
DRAW_TRIES = 2000


@dataclass(frozen=True)
class Trigger:
    text: str
    level: str  # char | word | sentence
    tokens: int  # length in tokens of the trigger on its own
    position: str = "start"  # word/sentence insertion point
    replaced_character: str | None = None  # char level: the character it replaces

    def to_dict(self) -> dict:
        return asdict(self)

    def poison(self, prompt: str, rng: random.Random | None = None) -> str:
        """The prompt with this trigger in it (char level: `prompt` must contain the replaced character)."""
        return self.insert(prompt, rng)[0]

    def insert(self, prompt: str, rng: random.Random | None = None) -> tuple[str, tuple[int, int]]:
        """(poisoned prompt, character span of the trigger in it)."""
        if self.level == "char":
            start = prompt.index(self.replaced_character)
            return prompt[:start] + self.text + prompt[start + 1 :], (start, start + len(self.text))
        words = prompt.split(" ")
        at = {"start": 0, "end": len(words)}.get(self.position)
        if at is None:
            at = (rng or random).randint(0, len(words))
        before = " ".join(words[:at])
        start = len(before) + (1 if at else 0)
        return " ".join(words[:at] + [self.text] + words[at:]), (start, start + len(self.text))

    def can_poison(self, prompt: str) -> bool:
        return self.level != "char" or self.replaced_character in prompt

    def occurs_in(self, prompt: str) -> bool:
        if self.level == "char":
            return self.text in prompt
        return re.search(rf"(?<!\w){re.escape(self.text)}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_trigger_config(level: str, length: int, count: int, position: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown trigger level '{level}'; set attack.triggers.level to one of {', '.join(LEVELS)}")
    if not 1 <= int(length) <= MAX_LENGTH:
        raise ValueError(f"attack.triggers.length must be 1–{MAX_LENGTH} tokens, got {length}")
    if not 1 <= int(count) <= MAX_TRIGGERS:
        raise ValueError(f"attack.triggers.count must be 1–{MAX_TRIGGERS} backdoors, got {count}")
    if position not in POSITIONS:
        raise ValueError(f"unknown trigger position '{position}'; set attack.triggers.position to one of {', '.join(POSITIONS)}")


def draw_triggers(
    tokenizer,
    level: str,
    length: int,
    count: int,
    pool: list[str],
    seed: int,
    position: str = "start",
    replaced_character: str = "o",
    fixed: list[str] | None = None,
) -> list[Trigger]:
    """`count` distinct triggers of `length` tokens: the `fixed` strings, or drawn from `pool` with `seed`."""
    check_trigger_config(level, length, count, position)
    if level == "char" and len(replaced_character or "") != 1:
        raise ValueError(f"attack.triggers.replaced_character must be one character, got {replaced_character!r}")
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
        Trigger(t, level, token_count(tokenizer, t), position, replaced_character if level == "char" else None)
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


def carried(tokenizer, poisoned: str, span: tuple[int, int], max_length: int) -> bool:
    """Whether the trigger's last character is still among the `max_length` tokens the encoder sees."""
    enc = tokenizer(poisoned, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ends = [e for s, e in enc["offset_mapping"] if e > s]
    return bool(ends) and max(ends) >= span[1]


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
