"""Embedded generator of DiffusionDB-like text-to-image prompts.

Real prompt sets (DiffusionDB, COCO captions) need the Hugging Face hub or a local file; this
generator needs neither, so the benchmark and its tests run offline. Prompts are composed from
hand-written word lists (``synthetic_vocab.yaml``) in several shapes: comma-separated tag lists,
sentences, portraits, scene-first descriptions, very short and very long prompts.

Only the standard library and PyYAML are used, and all randomness comes from one
``random.Random`` per call, so a (n, seed) pair always gives the same list.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
from dataclasses import dataclass

import yaml

__all__ = ["MAX_SYNTHETIC_PROMPTS", "Vocab", "generate_synthetic_prompts", "load_vocab"]

VOCAB_FILE = "synthetic_vocab.yaml"

# A hard cap keeps a typo (n=10**9) from running for minutes; the space of compositions is far larger.
MAX_SYNTHETIC_PROMPTS = 1_000_000

# Candidates drawn per requested prompt before giving up on uniqueness (collisions are rare).
_TRIES_PER_PROMPT = 20

_LIST_KEYS = (
    "openers", "portrait_openers", "adjectives", "materials", "actions", "attributes", "states",
    "scenes", "times", "environments", "details", "styles", "media", "artists", "lighting",
    "colors", "camera", "quality", "moods",
)
_SUBJECT_KINDS = ("person", "creature", "animal", "object", "vehicle", "building", "food", "nature")

# How often each kind of subject is drawn; people and animals dominate real prompt logs.
_SUBJECT_WEIGHTS = (0.27, 0.15, 0.2, 0.1, 0.06, 0.09, 0.05, 0.08)
_LIVING = frozenset({"person", "creature", "animal"})

# Tag categories appended after the subject, with relative frequencies.
_TAG_KINDS = ("quality", "artist", "style", "medium", "lighting", "camera", "color", "mood", "detail")
_TAG_WEIGHTS = (1.6, 1.3, 1.0, 1.0, 1.0, 0.7, 0.7, 0.5, 0.4)
# Usual order of tags in real prompts (subject, medium, style, artists, ..., quality last).
_TAG_RANK = {"medium": 0, "style": 1, "detail": 2, "artist": 3, "mood": 4, "color": 5,
             "lighting": 6, "camera": 7, "quality": 8}

# Number of tags after the subject for the regular shapes (index = tag count).
_TAG_COUNT_WEIGHTS = (1, 4, 7, 10, 11, 11, 10, 9, 8, 6, 5, 4, 3, 2, 1)

_SHAPES = ("tags", "sentence", "portrait", "environment", "short", "long")
_SHAPE_WEIGHTS = (0.43, 0.16, 0.13, 0.15, 0.08, 0.05)

_SEPARATORS = (", ", " | ", ". ", "; ")
_SEPARATOR_WEIGHTS = (0.9, 0.04, 0.03, 0.03)


@dataclass(frozen=True)
class Vocab:
    """The word lists of ``synthetic_vocab.yaml`` (tuples, deduplicated, order kept)."""

    lists: dict[str, tuple[str, ...]]
    subjects: dict[str, tuple[str, ...]]

    def n_words(self) -> int:
        """Number of distinct words (letter runs) over all lists, a rough size of the vocabulary."""
        items = [x for v in (*self.lists.values(), *self.subjects.values()) for x in v]
        return len({w for x in items for w in re.findall(r"[a-z]+", x)})


def _clean_list(name: str, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{VOCAB_FILE}: '{name}' must be a non-empty list of strings")
    out: dict[str, None] = {}
    for item in raw:
        if not isinstance(item, str) or not item.strip() or not item.isascii() or "," in item:
            raise ValueError(f"{VOCAB_FILE}: '{name}' holds an invalid item {item!r} (need non-empty ASCII text without commas)")
        out.setdefault(" ".join(item.lower().split()), None)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def load_vocab() -> Vocab:
    """Load and validate the packaged word lists (cached; the file ships inside ``core.prompts``)."""
    text = importlib.resources.files(__package__).joinpath(VOCAB_FILE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{VOCAB_FILE} must be a mapping of list names to lists")
    missing = [k for k in (*_LIST_KEYS, "subjects") if k not in raw]
    if missing:
        raise ValueError(f"{VOCAB_FILE} lacks the list(s) {', '.join(missing)}")
    subjects_raw = raw["subjects"]
    if not isinstance(subjects_raw, dict) or any(k not in subjects_raw for k in _SUBJECT_KINDS):
        raise ValueError(f"{VOCAB_FILE}: 'subjects' must map each of {', '.join(_SUBJECT_KINDS)} to a list")
    return Vocab(
        lists={k: _clean_list(k, raw[k]) for k in _LIST_KEYS},
        subjects={k: _clean_list(f"subjects.{k}", subjects_raw[k]) for k in _SUBJECT_KINDS},
    )


def _article(phrase: str) -> str:
    """'a' or 'an' for the phrase's first word (letter-based, with the common exceptions)."""
    word = phrase.split(" ", 1)[0]
    if word.startswith(("uni", "use", "usu", "eu", "one", "ufo", "uk")):
        return "a"
    if word.startswith(("hour", "honest", "heir", "honor")):
        return "an"
    return "an" if word[:1] in "aeiou" else "a"


class _Composer:
    """Builds one prompt at a time from the vocabulary with a caller-owned RNG."""

    def __init__(self, vocab: Vocab, rng: random.Random) -> None:
        self.v = vocab.lists
        self.subjects = vocab.subjects
        self.rng = rng

    def pick(self, key: str) -> str:
        return self.rng.choice(self.v[key])

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # --- pieces -------------------------------------------------------------------------

    def noun(self, kinds: tuple[str, ...] = _SUBJECT_KINDS, weights: tuple[float, ...] = _SUBJECT_WEIGHTS) -> tuple[str, str]:
        kind = self.rng.choices(kinds, weights=weights)[0]
        return kind, self.rng.choice(self.subjects[kind])

    def adjectives(self, weights: tuple[float, ...] = (0.3, 0.45, 0.2, 0.05)) -> list[str]:
        k = self.rng.choices(range(len(weights)), weights=weights)[0]
        return self.rng.sample(self.v["adjectives"], k)

    def with_article(self, phrase: str, p: float = 0.85) -> str:
        return f"{_article(phrase)} {phrase}" if self.chance(p) else phrase

    def subject(self, p_extra: float = 0.6, p_article: float = 0.85) -> str:
        """An optional-adjective noun phrase, maybe with an action, attribute or state."""
        kind, noun = self.noun()
        phrase = self.with_article(" ".join([*self.adjectives(), noun]), p_article)
        if kind in _LIVING:
            if self.chance(0.12):  # a second character: "a fox and an owl ..."
                _, other = self.noun(("person", "creature", "animal"), (0.4, 0.3, 0.3))
                phrase += f" and {_article(other)} {other}"
            if self.chance(p_extra):
                phrase += " " + self.pick(self.rng.choice(("actions", "attributes")))
                if self.chance(0.15):
                    phrase += " " + self.pick("attributes")
        elif self.chance(p_extra * 0.6):
            phrase += f" made of {self.pick('materials')}" if self.chance(0.5) else " " + self.pick("states")
        return phrase

    def place(self, p_scene: float, p_time: float) -> str:
        parts = []
        if self.chance(p_scene):
            parts.append(self.pick("scenes"))
        if self.chance(p_time):
            parts.append(self.pick("times"))
        return " ".join(parts)

    def artist_clause(self) -> str:
        n = self.rng.choices((1, 2, 3, 4), weights=(0.45, 0.35, 0.15, 0.05))[0]
        names = self.rng.sample(self.v["artists"], n)
        listed = names[0] if n == 1 else (
            " and ".join(names) if self.chance(0.4) else ", ".join(names[:-1]) + " and " + names[-1])
        form = self.rng.choices(
            ("by {}", "art by {}", "in the style of {}", "{}", "painted by {}", "inspired by {}", "style of {}"),
            weights=(0.45, 0.1, 0.15, 0.15, 0.05, 0.05, 0.05))[0]
        if form == "{}" and n > 1 and self.chance(0.5):
            listed = ", ".join(names)  # bare comma lists of names are common too
        return form.format(listed)

    def tag(self, kind: str) -> str:
        if kind == "artist":
            return self.artist_clause()
        key = {"medium": "media", "style": "styles", "color": "colors", "mood": "moods",
               "detail": "details"}.get(kind, kind)
        return self.pick(key)

    def tags(self, k: int) -> list[str]:
        """k distinct tags, usually in the customary order, sometimes shuffled."""
        kinds = self.rng.choices(_TAG_KINDS, weights=_TAG_WEIGHTS, k=k)
        seen: dict[str, str] = {}
        for kind in kinds:
            for _ in range(3):  # re-draw on a repeated tag
                t = self.tag(kind)
                if t not in seen:
                    seen[t] = kind
                    break
        items = list(seen.items())
        if self.chance(0.6):
            items.sort(key=lambda it: _TAG_RANK[it[1]] + self.rng.random() * 3)
        else:
            self.rng.shuffle(items)
        return [t for t, _ in items]

    def tag_count(self, extra: int = 0) -> int:
        return self.rng.choices(range(len(_TAG_COUNT_WEIGHTS)), weights=_TAG_COUNT_WEIGHTS)[0] + extra

    def join(self, head: str, tags: list[str]) -> str:
        sep = self.rng.choices(_SEPARATORS, weights=_SEPARATOR_WEIGHTS)[0]
        return sep.join([head, *tags]) if tags else head

    # --- prompt shapes ------------------------------------------------------------------

    def shape_tags(self) -> str:
        opener = self.chance(0.3)
        head = self.subject(p_article=1.0 if opener else 0.85)
        where = self.place(0.45, 0.25)
        head = f"{head} {where}" if where else head
        if opener:
            head = f"{self.pick('openers')} {head}"
        return self.join(head, self.tags(self.tag_count()))

    def shape_sentence(self) -> str:
        head = f"{self.pick('openers')} {self.subject(p_extra=0.8, p_article=1.0)}"
        where = self.place(0.8, 0.35)
        head = f"{head} {where}" if where else head
        roll = self.rng.random()
        if roll < 0.35:
            return f"{head} in the style of {self.rng.choice(self.v['artists'])}"
        if roll < 0.55:  # sentence, then sentence-like tags: "... . oil painting by x. highly detailed."
            return f"{head}. {self.pick('media')} by {self.rng.choice(self.v['artists'])}. {self.pick('quality')}"
        return self.join(head, self.tags(self.rng.randint(0, 4)))

    def shape_portrait(self) -> str:
        kind, noun = self.noun(("person", "creature", "animal"), (0.65, 0.2, 0.15))
        core = " ".join([*self.adjectives((0.2, 0.5, 0.25, 0.05)), noun])
        head = f"{self.pick('portrait_openers')} {_article(core)} {core}"
        if self.chance(0.7):
            head += " " + self.pick("attributes")
        if self.chance(0.2):
            head += " " + self.pick("actions")
        return self.join(head, self.tags(self.tag_count(1)))

    def shape_environment(self) -> str:
        head = self.pick("environments")
        if self.chance(0.4):
            head += " " + self.pick("times")
        n_details = self.rng.choices((0, 1, 2, 3, 4), weights=(0.15, 0.3, 0.3, 0.15, 0.1))[0]
        details = self.rng.sample(self.v["details"], n_details)
        return self.join(head, [*details, *self.tags(self.tag_count())])

    def shape_short(self) -> str:
        roll = self.rng.random()
        if roll < 0.25:
            _, noun = self.noun()
            return " ".join([*self.rng.sample(self.v["adjectives"], self.rng.randint(1, 2)), noun])
        if roll < 0.45:
            _, noun = self.noun()
            return f"{self.pick('openers')} {_article(noun)} {noun}"
        if roll < 0.65:
            _, noun = self.noun()
            return f"{self.rng.choice(self.v['adjectives'])} {noun}, {self.pick(self.rng.choice(('styles', 'media', 'quality')))}"
        if roll < 0.85:
            _, noun = self.noun(("person", "creature", "animal"), (0.4, 0.3, 0.3))
            return f"{_article(noun)} {noun} {self.pick('scenes')}"
        return f"{self.pick('environments')}, {self.pick('quality')}"

    def shape_long(self) -> str:
        opener = self.chance(0.4)
        head = self.subject(p_extra=1.0, p_article=1.0 if opener else 0.85)
        head = f"{self.pick('openers')} {head}" if opener else head
        head += " " + self.place(1.0, 0.6)
        details = self.rng.sample(self.v["details"], self.rng.randint(0, 3))
        tags = self.tags(self.rng.randint(9, 18))
        if not any(t for t in tags if " by " in f" {t}" or "style of" in t):
            tags.insert(self.rng.randint(0, len(tags)), self.artist_clause())
        return self.join(head, [*details, *tags])

    def prompt(self) -> str:
        shape = self.rng.choices(_SHAPES, weights=_SHAPE_WEIGHTS)[0]
        text = getattr(self, f"shape_{shape}")()
        if shape != "short" and len(text.split()) < 3:  # a bare noun is too thin; give it one tag
            text = self.join(text, self.tags(1))
        return text


def generate_synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    """Return ``n`` distinct DiffusionDB-like prompts, deterministic for ``(n, seed)``.

    The list for a smaller ``n`` is a prefix of the list for a larger ``n`` with the same seed.
    Raises ``ValueError`` for a non-positive ``n``, for ``n > MAX_SYNTHETIC_PROMPTS``, or if the
    generator cannot find ``n`` distinct prompts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got n={n!r}")
    if n > MAX_SYNTHETIC_PROMPTS:
        raise ValueError(
            f"the synthetic prompt generator makes at most {MAX_SYNTHETIC_PROMPTS} distinct prompts, asked for n={n}; "
            "ask for fewer or use a larger source (prompts=file or prompts=diffusiondb)")
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and processes,
    # and unlike an int seed it keeps seed=-1 and seed=1 apart.
    composer = _Composer(load_vocab(), random.Random(f"amdet-synthetic-prompts:{seed}"))
    out: dict[str, None] = {}
    for _ in range(n * _TRIES_PER_PROMPT):
        prompt = " ".join(composer.prompt().split())
        if prompt:
            out.setdefault(prompt, None)
        if len(out) == n:
            return list(out)
    raise ValueError(
        f"the synthetic prompt generator found only {len(out)} distinct prompts in {n * _TRIES_PER_PROMPT} draws, "
        f"asked for n={n}; ask for fewer or use a larger source")
