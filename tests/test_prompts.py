"""Tests for core.prompts: the synthetic generator, the prompt sources and conf/prompts/*.yaml."""

from __future__ import annotations

import re
import statistics
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core.prompts import (
    HFDatasetPrompts,
    PromptSource,
    SyntheticPrompts,
    TextFilePrompts,
    generate_synthetic_prompts,
    make_prompt_source,
)
from core.prompts.synthetic import MAX_SYNTHETIC_PROMPTS, load_vocab

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "prompts"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _assert_one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


@pytest.fixture(scope="module")
def draw10k() -> list[str]:
    return generate_synthetic_prompts(10_000, seed=0)


# --- synthetic generator ---------------------------------------------------------------------


def test_synthetic_deterministic_and_seed_sensitive():
    a = generate_synthetic_prompts(500, seed=0)
    assert a == generate_synthetic_prompts(500, seed=0)
    b = generate_synthetic_prompts(500, seed=1)
    assert a != b
    assert len(set(a) & set(b)) < 50  # different seeds give mostly different prompts, not a reshuffle
    assert generate_synthetic_prompts(500, seed=-1) != b  # negative seeds are not folded onto positive ones
    assert generate_synthetic_prompts(100, seed=0) == a[:100]  # smaller n is a prefix


def test_synthetic_10k_unique_varied_and_clean(draw10k):
    assert len(draw10k) == 10_000
    assert len(set(draw10k)) == 10_000
    distinct_words = {w for p in draw10k for w in _words(p)}
    assert len(distinct_words) >= 2_000, len(distinct_words)
    for p in draw10k:
        assert p and p == p.strip() and "  " not in p and "\n" not in p
        assert p.isascii()
    # several prompt shapes, not one template: openers, artist clauses and scene-first tag lists all occur
    assert sum(p.startswith(("a photo of", "a painting of", "an illustration of")) for p in draw10k) > 50
    assert sum(" by " in f" {p}" for p in draw10k) > 2_000
    assert len({p.split(",")[0] for p in draw10k}) > 8_000


def test_synthetic_length_distribution(draw10k):
    lengths = [len(p.split()) for p in draw10k]
    assert 8 <= statistics.median(lengths) <= 35
    assert sum(n >= 30 for n in lengths) > 100
    assert sum(n >= 40 for n in lengths) > 20
    assert sum(n <= 6 for n in lengths) > 100
    assert sum(8 <= n <= 35 for n in lengths) / len(lengths) > 0.6


def test_synthetic_20k_are_distinct():
    # its speed (about 2 s on 2 cores) is no unit-test matter: a loaded machine would fail a time limit
    assert len(set(generate_synthetic_prompts(20_000, seed=3))) == 20_000


@pytest.mark.parametrize("n", [0, -5, 2.5, "10", True])
def test_synthetic_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        generate_synthetic_prompts(n)  # type: ignore[arg-type]


def test_synthetic_rejects_too_many():
    with pytest.raises(ValueError) as info:
        generate_synthetic_prompts(MAX_SYNTHETIC_PROMPTS + 1)
    assert str(MAX_SYNTHETIC_PROMPTS + 1) in _assert_one_line(info.value)


def test_vocab_is_large_ascii_and_packaged():
    vocab = load_vocab()
    assert vocab.n_words() >= 2_500
    assert len(vocab.lists["artists"]) >= 200
    assert sum(len(v) for v in vocab.subjects.values()) >= 500
    for items in (*vocab.lists.values(), *vocab.subjects.values()):
        assert all(x.isascii() and "," not in x for x in items)


# --- PromptSource / text files ---------------------------------------------------------------


class _ListSource(PromptSource):
    def __init__(self, prompts: list[str]) -> None:
        self.name = "listsource"
        self._prompts = prompts

    def all_prompts(self) -> list[str]:
        return self._prompts


def test_load_is_deterministic_distinct_and_seeded():
    src = _ListSource([f"prompt number {i}" for i in range(200)])
    a = src.load(50, seed=0)
    assert a == src.load(50, seed=0)
    assert len(set(a)) == 50
    assert a != src.load(50, seed=1)
    with pytest.raises(ValueError, match=r"\bn\b"):
        src.load(0)
    with pytest.raises(ValueError, match=r"\bn\b"):
        src.load(3.0)  # type: ignore[arg-type]


def test_text_file_cleaning_and_sampling(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "\ufeffa red fox in the snow\n"
        "\n"
        "   a   red fox   in the snow  \n"  # duplicate after whitespace cleaning
        "cyberpunk city street at night, neon signs\r\n"
        "\t\n"
        "a cute corgi astronaut\n"
        "cyberpunk city street at night, neon signs\n"
        "an old sailor with a white beard\n",
        encoding="utf-8",
    )
    src = TextFilePrompts(path)
    cleaned = sorted(src.load(4, seed=0))
    assert cleaned == sorted([
        "a red fox in the snow",
        "cyberpunk city street at night, neon signs",
        "a cute corgi astronaut",
        "an old sailor with a white beard",
    ])
    assert src.load(3, seed=7) == src.load(3, seed=7)
    orders = {tuple(src.load(4, seed=s)) for s in range(10)}
    assert len(orders) > 1


def test_too_few_prompts_error_is_one_line(tmp_path):
    path = tmp_path / "few.txt"
    path.write_text("one\ntwo\nthree\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        TextFilePrompts(path).load(10)
    msg = _assert_one_line(info.value)
    assert "has 3 distinct prompts" in msg and "n=10" in msg and str(path) in msg
    assert "fewer" in msg and "larger source" in msg


def test_missing_file_error_is_one_line(tmp_path):
    path = tmp_path / "nope" / "prompts.txt"
    with pytest.raises(FileNotFoundError) as info:
        TextFilePrompts(path).load(5)
    msg = _assert_one_line(info.value)
    assert str(path) in msg and "prompts.path=" in msg and "prompts=synthetic" in msg


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n   \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        TextFilePrompts(path).all_prompts()
    assert str(path) in _assert_one_line(info.value)


def test_synthetic_source_pool_and_draws():
    src = SyntheticPrompts(seed=0, size=300)
    assert src.all_prompts() == generate_synthetic_prompts(300, seed=0)
    draw = src.load(100, seed=5)
    assert len(set(draw)) == 100 and set(draw) <= set(src.all_prompts())
    assert draw == SyntheticPrompts(seed=0, size=300).load(100, seed=5)
    assert draw != src.load(100, seed=6)
    with pytest.raises(ValueError) as info:
        src.load(301)
    assert "300" in _assert_one_line(info.value)


# --- Hugging Face source (no hub access here: both failure paths are faked) --------------------


def test_hf_missing_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError) as info:
        HFDatasetPrompts("poloclub/diffusiondb", "train", "prompt", config_name="2m_random_5k").load(10)
    msg = _assert_one_line(info.value)
    assert "pip install 'amdet-bench[hub]'" in msg


def test_hf_failing_load_is_clear_and_chained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'poloclub/diffusiondb' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(RuntimeError) as info:
        HFDatasetPrompts("poloclub/diffusiondb", "train", "prompt", config_name="2m_random_5k").load(10)
    msg = _assert_one_line(info.value)
    assert "poloclub/diffusiondb" in msg
    assert "prompts=file prompts.path=" in msg and "prompts=synthetic" in msg
    assert isinstance(info.value.__cause__, ConnectionError)
    assert calls == [(("poloclub/diffusiondb", "2m_random_5k"), {"split": "train", "revision": None})]


class _FakeDataset:
    def __init__(self, columns: dict[str, list]) -> None:
        self._columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key: str) -> list:
        return self._columns[key]


def test_hf_flattens_caption_lists(monkeypatch):
    ds = _FakeDataset({
        "sentences": [["a man riding a horse", "a horse and rider"], ["a cat on a sofa"], None,
                      ["a man riding a horse", {"raw": "two dogs playing", "tokens": ["two", "dogs"]}]],
        "cocoid": [1, 2, 3, 4],
    })
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: ds))
    src = HFDatasetPrompts("yerevann/coco-karpathy", "train", "sentences")
    assert sorted(src.load(4)) == ["a cat on a sofa", "a horse and rider", "a man riding a horse", "two dogs playing"]

    with pytest.raises(ValueError) as info:
        HFDatasetPrompts("yerevann/coco-karpathy", "train", "caption").load(1)
    assert "sentences" in _assert_one_line(info.value)
    with pytest.raises(ValueError) as info:
        HFDatasetPrompts("yerevann/coco-karpathy", "train", "cocoid").load(1)
    assert "cocoid" in _assert_one_line(info.value)


# --- make_prompt_source and the config group -------------------------------------------------


def test_make_prompt_source_each_kind(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\nb\nc\n", encoding="utf-8")
    src = make_prompt_source({"source": "file", "path": str(path)})
    assert isinstance(src, TextFilePrompts) and sorted(src.load(3)) == ["a", "b", "c"]

    src = make_prompt_source(OmegaConf.create({"source": "synthetic", "seed": 4, "size": 50}))
    assert isinstance(src, SyntheticPrompts) and src.all_prompts() == generate_synthetic_prompts(50, seed=4)

    src = make_prompt_source({"source": "hf", "dataset": "d/x", "split": "test", "column": "text",
                              "config_name": "c", "revision": None})
    assert isinstance(src, HFDatasetPrompts)
    assert (src.dataset, src.split, src.column, src.config_name, src.revision) == ("d/x", "test", "text", "c", None)


def test_make_prompt_source_errors():
    with pytest.raises(ValueError) as info:
        make_prompt_source({"source": "s3"})
    msg = _assert_one_line(info.value)
    assert "s3" in msg and all(k in msg for k in ("file", "hf", "synthetic"))

    with pytest.raises(ValueError) as info:
        make_prompt_source({"source": "file"})
    assert _assert_one_line(info.value) == "prompts.path is required for source=file"

    with pytest.raises(ValueError) as info:
        make_prompt_source(OmegaConf.create({"source": "file", "path": "???"}))
    assert "prompts.path is required" in _assert_one_line(info.value)

    with pytest.raises(ValueError) as info:
        make_prompt_source({"source": "hf", "dataset": "d/x", "split": "train"})
    assert "prompts.column is required for source=hf" in _assert_one_line(info.value)

    with pytest.raises(ValueError) as info:
        make_prompt_source({"source": "synthetic", "sizee": 10})
    assert "prompts.sizee" in _assert_one_line(info.value)

    with pytest.raises(ValueError):
        make_prompt_source({"source": "synthetic", "size": 0})


@pytest.mark.parametrize("name", ["synthetic", "file", "diffusiondb", "coco"])
def test_conf_prompts_yaml(name, tmp_path):
    path = CONF_DIR / f"{name}.yaml"
    assert path.read_text(encoding="utf-8").startswith("# "), "each config starts with a one-line comment"
    cfg = OmegaConf.load(path)
    if name == "file":
        assert OmegaConf.is_missing(cfg, "path")
        with pytest.raises(ValueError, match="prompts.path is required"):
            make_prompt_source(cfg)
        prompts = tmp_path / "p.txt"
        prompts.write_text("x\ny\n", encoding="utf-8")
        cfg.path = str(prompts)
        assert sorted(make_prompt_source(cfg).load(2)) == ["x", "y"]
        return
    src = make_prompt_source(cfg)  # building is lazy: hub sources download nothing here
    if name == "synthetic":
        assert isinstance(src, SyntheticPrompts) and (src.seed, src.size) == (0, 20000)
        assert len(src.load(10)) == 10
    else:
        assert isinstance(src, HFDatasetPrompts)
        expected = {"diffusiondb": ("poloclub/diffusiondb", "prompt"), "coco": ("yerevann/coco-karpathy", "sentences")}
        assert (src.dataset, src.column) == expected[name]
