"""Where shallow/training prompts come from: a text file, a Hugging Face dataset, or the embedded generator.

Every source exposes its whole pool (``all_prompts``) and a deterministic draw of ``n`` distinct,
cleaned prompts (``load``). ``make_prompt_source`` builds one from the ``prompts`` config group
(``conf/prompts/*.yaml``). All error messages are single lines that say how to fix the problem.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .synthetic import generate_synthetic_prompts

__all__ = [
    "ROLES",
    "PromptSource",
    "TextFilePrompts",
    "HFDatasetPrompts",
    "SyntheticPrompts",
    "clean_prompts",
    "make_prompt_source",
]

_OFFLINE_FIX = "no access to the Hugging Face hub? use prompts=file prompts.path=... or prompts=synthetic"
_NO_DATASETS = "the 'datasets' package is needed for Hugging Face prompt sources: pip install 'amdet-bench[hub]'"


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse a (possibly multi-line) message to one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got n={n!r}")
    return n


# Who draws prompts. Attacker (backdoor training and its held-out prompts), benign fine-tuning and
# defender (the scan's shallow set) take disjoint shares of every source: the paper's defender has no
# access to any model's training data. A prompt's share follows from a hash of its text alone, so two
# sources holding the same prompt give it to the same role, and the split is the same on every machine.
ROLES = ("attacker", "benign", "defender")


def check_partition(partition: Mapping[str, float] | None) -> dict[str, float] | None:
    """The shares of each role (validated), or None: no partition, every role draws from the whole pool."""
    if partition is None:
        return None
    shares = {str(k): float(v) for k, v in dict(partition).items()}
    unknown = sorted(set(shares) - set(ROLES))
    if unknown or any(v <= 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(
            f"prompts.partition must give each of {', '.join(ROLES)} a positive share summing to 1, got {shares}; "
            "e.g. prompts.partition={attacker: 0.25, benign: 0.25, defender: 0.5}, or null for no partition")
    return {r: shares[r] for r in ROLES if r in shares}


def role_of(prompt: str, partition: Mapping[str, float]) -> str:
    """The role whose share a (cleaned) prompt falls in: a stable hash of its text mapped to [0, 1)."""
    u = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
    edge = 0.0
    for role, share in partition.items():
        edge += share
        if u < edge:
            return role
    return role  # rounding at the top edge


def clean_prompts(prompts: Iterable[str]) -> list[str]:
    """Strip, collapse inner whitespace, drop empty lines and exact duplicates (first one kept)."""
    seen: dict[str, None] = {}
    for p in prompts:
        text = " ".join(p.split())
        if text:
            seen.setdefault(text, None)
    return list(seen)


class PromptSource(abc.ABC):
    """A pool of prompts with a deterministic sampler on top."""

    name: str
    partition: dict[str, float] | None = None  # role → share; None: every role draws from the whole pool

    @abc.abstractmethod
    def all_prompts(self) -> list[str]:
        """The whole pool, in a stable order (uncleaned)."""

    def pool(self, role: str | None = None) -> list[str]:
        """The cleaned pool, or the share of it that belongs to `role` when the source is partitioned."""
        pool = clean_prompts(self.all_prompts())
        if role is None or self.partition is None:
            return pool
        if role not in self.partition:
            raise ValueError(f"unknown prompt role {role!r}; prompts.partition has {', '.join(self.partition)}")
        return [p for p in pool if role_of(p, self.partition) == role]

    def load(self, n: int, seed: int = 0, role: str | None = None) -> list[str]:
        """Draw ``n`` distinct cleaned prompts without replacement from the pool (or `role`'s share of
        it); same ``(n, seed, role)`` gives the same list."""
        _check_n(n)
        pool = self.pool(role)
        if len(pool) < n:
            share = f" in the {role}'s share ({self.partition[role]:.0%})" if role and self.partition else ""
            raise ValueError(
                f"prompt source {self.name} has {len(pool)} distinct prompts{share} but n={n} were asked; "
                f"ask for fewer (n={len(pool)} or less), use a larger source, or change prompts.partition")
        return random.Random(seed).sample(pool, n)

    def describe(self, role: str | None = None) -> dict:
        """What a manifest or result records of where its prompts came from."""
        return {"source": self.name, "role": role, "partition": self.partition}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class TextFilePrompts(PromptSource):
    """One prompt per line of a UTF-8 text file (a leading BOM and blank lines are ignored).

    A relative path is taken from the current directory; under Hydra with ``hydra.job.chdir=true``
    pass an absolute path (or ``${hydra:runtime.cwd}/...``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.name = f"file:{self.path}"

    def all_prompts(self) -> list[str]:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"prompt file not found: {self.path}; "
                "set prompts.path=<file with one prompt per line> or use prompts=synthetic")
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"prompt file {self.path} is not UTF-8 text ({_one_line(e)}); re-save it as UTF-8") from e
        lines = text.splitlines()
        if not any(line.strip() for line in lines):
            raise ValueError(
                f"prompt file {self.path} holds no prompts; "
                "write one prompt per line or use prompts=synthetic")
        return lines


def _text_of(item: Any) -> str | None:
    """A caption as text: a string, or the ``raw`` field of a Karpathy-style sentence record."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("raw"), str):
        return item["raw"]
    return None


class HFDatasetPrompts(PromptSource):
    """Prompts from a text column of a Hugging Face dataset (needs the optional ``datasets`` package and hub access).

    The column may hold strings or lists of strings (COCO-style, several captions per image);
    lists are flattened. Nothing is downloaded until ``all_prompts``/``load`` is called, and the
    loaded pool is kept for the lifetime of the object.
    """

    def __init__(self, dataset: str, split: str, column: str,
                 config_name: str | None = None, revision: str | None = None) -> None:
        self.dataset = dataset
        self.split = split
        self.column = column
        self.config_name = config_name
        self.revision = revision
        config = f"/{config_name}" if config_name else ""
        at = f"@{revision}" if revision else ""
        self.name = f"hf:{dataset}{config}{at}[{split}].{column}"
        self._pool: list[str] | None = None

    def all_prompts(self) -> list[str]:
        if self._pool is None:
            self._pool = self._fetch()
        return list(self._pool)

    def _fetch(self) -> list[str]:
        try:
            import datasets  # optional dependency, imported only when a hub source is used
        except ImportError as e:
            raise ImportError(_NO_DATASETS) from e
        try:
            ds = datasets.load_dataset(self.dataset, self.config_name, split=self.split, revision=self.revision)
        except Exception as e:  # offline, unknown id/config/split, auth ... all end the same way for the user
            raise RuntimeError(
                f"could not load Hugging Face dataset {self.dataset}"
                f"{' (config ' + self.config_name + ')' if self.config_name else ''} split {self.split}: "
                f"{type(e).__name__}: {_one_line(e, 200)}; {_OFFLINE_FIX}") from e
        columns = list(getattr(ds, "column_names", None) or [])
        if columns and self.column not in columns:
            raise ValueError(
                f"dataset {self.dataset} has no column {self.column!r} (columns: {', '.join(columns)}); "
                "set prompts.column to one of them")
        return self._flatten(ds[self.column])

    def _flatten(self, values: Iterable[Any]) -> list[str]:
        out: list[str] = []
        for v in values:
            if v is None:
                continue
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, (list, tuple)) and None not in (texts := [_text_of(x) for x in v]):
                out.extend(t for t in texts if t is not None)
            else:
                raise ValueError(
                    f"column {self.column!r} of {self.dataset} holds {type(v).__name__} values, not text or lists of text; "
                    "set prompts.column to a text column")
        return out


class SyntheticPrompts(PromptSource):
    """The embedded DiffusionDB-like generator: a pool of ``size`` prompts made with ``seed``."""

    def __init__(self, seed: int = 0, size: int = 20000) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got size={size!r}")
        self.seed = seed
        self.size = size
        self.name = f"synthetic(seed={seed}, size={size})"

    def all_prompts(self) -> list[str]:
        return list(_synthetic_pool(self.size, self.seed))

    def pool(self, role: str | None = None) -> list[str]:
        # deterministic in (size, seed, partition): computed once per process (a job draws several times)
        return list(_synthetic_role_pool(self.size, self.seed, tuple((self.partition or {}).items()), role))


@functools.lru_cache(maxsize=4)
def _synthetic_pool(size: int, seed: int) -> tuple[str, ...]:
    return tuple(generate_synthetic_prompts(size, seed))


@functools.lru_cache(maxsize=16)
def _synthetic_role_pool(size: int, seed: int, partition: tuple, role: str | None) -> tuple[str, ...]:
    source = SyntheticPrompts(seed, size)
    source.partition = dict(partition) or None
    return tuple(PromptSource.pool(source, role))


# Keys each source accepts (required ones first), as named in conf/prompts/*.yaml.
_REQUIRED = {"file": ("path",), "hf": ("dataset", "split", "column"), "synthetic": ()}
_OPTIONAL = {"file": (), "hf": ("config_name", "revision"), "synthetic": ("seed", "size")}
# Keys a prompts config may carry for its caller (e.g. how many prompts to draw); ignored here.
_PASSTHROUGH = frozenset({"n"})
_COMMON = ("partition",)  # every source: the roles' shares (ROLES), or null


def _as_dict(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf is a core dependency, but plain dicts work without it
        DictConfig = None
    if DictConfig is not None and isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"prompts config must be a mapping, got {type(cfg).__name__}")


def _is_missing(value: Any) -> bool:
    return value is None or value == "???" or (isinstance(value, str) and not value.strip())


def _as_int(cfg: dict[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    if _is_missing(value):
        return default
    if isinstance(value, bool):
        raise ValueError(f"prompts.{key} must be an int, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"prompts.{key} must be an int, got {value!r}") from None


def make_prompt_source(cfg: Mapping[str, Any] | Any) -> PromptSource:
    """Build a prompt source from a ``prompts`` config (dict or OmegaConf ``DictConfig``).

    ``source`` picks the kind: ``file`` (``path``), ``hf`` (``dataset``, ``split``, ``column``,
    optional ``config_name``, ``revision``) or ``synthetic`` (optional ``seed``, ``size``).
    """
    d = _as_dict(cfg)
    kind = d.get("source")
    if kind not in _REQUIRED:
        raise ValueError(f"unknown prompts.source={kind!r}; choose one of: {', '.join(_REQUIRED)}")
    allowed = {"source", *_REQUIRED[kind], *_OPTIONAL[kind], *_COMMON, *_PASSTHROUGH}
    unknown = sorted(k for k in d if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join('prompts.' + str(k) for k in unknown)} for source={kind}; "
            f"valid keys: {', '.join(sorted(allowed - _PASSTHROUGH))}")
    for key in _REQUIRED[kind]:
        if _is_missing(d.get(key)):
            raise ValueError(f"prompts.{key} is required for source={kind}")

    source = _make(kind, d)
    source.partition = check_partition(d.get("partition"))
    return source


def _make(kind: str, d: dict[str, Any]) -> PromptSource:
    if kind == "file":
        return TextFilePrompts(str(d["path"]))
    if kind == "hf":
        def opt(key: str) -> str | None:
            return None if _is_missing(d.get(key)) else str(d[key])
        return HFDatasetPrompts(str(d["dataset"]), str(d["split"]), str(d["column"]),
                                config_name=opt("config_name"), revision=opt("revision"))
    size = _as_int(d, "size", 20000)
    if size <= 0:
        raise ValueError(f"prompts.size must be a positive int, got {size}")
    return SyntheticPrompts(seed=_as_int(d, "seed", 0), size=size)
