"""The embedded tiny world's pretrained bases: tiny-clip, tiny-longclip, tiny-siglip.

Each base is described by its encoder config (`conf/encoder/tiny-*.yaml`, key `tiny`), built once
— random init, then distilled from the paired tower on synthetic prompts — and cached under a
content-addressed key: the spec, the source code that builds it and the torch/transformers
versions. A second call finds the cache and returns in well under a second. Concurrent builders
(many Slurm jobs on one file system) are serialised by a lock file; the write is atomic.

tiny-longclip is made the way LongCLIP was made from CLIP: tiny-clip's 77 position embeddings are
stretched to 248 (the first 20 kept, the rest interpolated 4×) and then fine-tuned on long captions.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from core.cache import cache_root
from core.encoders import TextEncoder
from core.loading import load_encoder
from core.metrics import assimilation
from core.precision import full_precision
from core.prompts import generate_synthetic_prompts
from core.provenance import config_hash, source_hash
from core.store import MANIFEST, save_model
from core.tiny.architectures import TinyArch, random_encoder
from core.tiny.paired_tower import PairedTower, paired_tower
from core.tiny.pretrain import PretrainConfig, distill

ENCODER_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "encoder"
# the code whose change must invalidate cached bases
BUILD_SOURCES = ("core/tiny", "core/encoders.py", "core/contrastive.py", "core/prompts/synthetic.py",
                 "core/prompts/synthetic_vocab.yaml")
KEEP_POSITIONS = 20  # LongCLIP keeps the first 20 positions and stretches the rest
HELD_OUT_SEED = 10_000  # held-out prompts for the quality report come from another generator seed


@dataclass(frozen=True)
class TinyBaseSpec:
    """How to build one tiny base (the `tiny` block of a tiny encoder config)."""

    name: str
    arch: TinyArch
    pretrain: PretrainConfig = PretrainConfig()
    prompts: int = 2400  # synthetic prompts distilled on
    prompt_seed: int = 0
    long_captions: int = 1  # >1: join this many prompts into one caption (LongCLIP fine-tuning)
    init_from: str | None = None  # name of a base to start from (position-stretched)
    seed: int = 0  # initialisation seed
    quality_prompts: int = 200  # held-out prompts for the build report
    parent: "TinyBaseSpec | None" = field(default=None, compare=False)

    @classmethod
    def from_config(cls, name: str, tiny: dict) -> "TinyBaseSpec":
        tiny = dict(tiny)
        arch = TinyArch(**tiny.pop("arch"))
        pretrain = PretrainConfig(**tiny.pop("pretrain", {}))
        spec = cls(name=name, arch=arch, pretrain=pretrain, **tiny)
        if spec.prompts <= 0:
            raise ValueError(f"encoder.tiny.prompts must be positive, got {spec.prompts}")
        if spec.init_from:
            object.__setattr__(spec, "parent", spec_by_name(spec.init_from))
        return spec

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch.to_dict(),
            "pretrain": vars(self.pretrain),
            "prompts": self.prompts,
            "prompt_seed": self.prompt_seed,
            "long_captions": self.long_captions,
            "seed": self.seed,
            "quality_prompts": self.quality_prompts,
            "init_from": self.parent.key() if self.parent else None,
        }

    def key(self) -> str:
        """Content address: spec + building code + the numeric libraries that shape the weights."""
        return config_hash({
            "spec": self.to_dict(),
            "code": source_hash(*BUILD_SOURCES),
            "torch": importlib.metadata.version("torch"),
            "transformers": importlib.metadata.version("transformers"),
        })

    def cache_dir(self) -> Path:
        return cache_root() / "bases" / f"{self.name}-{self.key()}"


def encoder_config(name: str) -> dict:
    """The encoder config `conf/encoder/<name>.yaml` as a plain dict; unknown names fail in one line."""
    path = ENCODER_CONF_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in ENCODER_CONF_DIR.glob("*.yaml"))
        raise ValueError(f"unknown encoder '{name}'; choose one of {', '.join(known)} (conf/encoder/)")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def spec_by_name(name: str) -> TinyBaseSpec:
    cfg = encoder_config(name)
    if not cfg.get("tiny"):
        raise ValueError(f"encoder '{name}' is not a tiny base (it loads from {cfg.get('name_or_path')})")
    return TinyBaseSpec.from_config(name, cfg["tiny"])


def get_base(spec: TinyBaseSpec, progress: bool = True) -> Path:
    """The cached directory of a tiny base, building it (and its parent) first if needed."""
    target = spec.cache_dir()
    if (target / MANIFEST).exists():
        return target
    parent_dir = get_base(spec.parent, progress) if spec.parent else None
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MANIFEST).exists():  # another process built it while we waited
            return target
        with full_precision():  # a cached base is the same whatever precision the run that builds it uses
            encoder, report = build(spec, parent_dir, progress)
        manifest = {"kind": "base", "name": spec.name, "key": spec.key(), "spec": spec.to_dict(), "build": report}
        save_model(encoder, target, manifest, overwrite=True)
    return target


def build(spec: TinyBaseSpec, parent_dir: Path | None, progress: bool = True) -> tuple[TextEncoder, dict]:
    """Initialise (randomly or from the stretched parent) and distil; returns the encoder and a report."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    if parent_dir is not None:
        encoder = stretch_positions(load_encoder(parent_dir), spec.arch, seed=spec.seed)
    else:
        encoder = random_encoder(spec.arch, seed=spec.seed)
    tower = paired_tower()
    pool = generate_synthetic_prompts(spec.prompts * spec.long_captions, seed=spec.prompt_seed)
    prompts = [". ".join(pool[i : i + spec.long_captions]) for i in range(0, len(pool), spec.long_captions)]
    stats = distill(encoder, prompts, spec.pretrain, tower, progress=progress)
    report = {
        "build_s": round(time.perf_counter() - t0, 2),
        "targets_s": round(stats["targets_s"], 2),
        "train_s": round(stats["train_s"], 2),
        "loss_first": stats["loss"][0] if stats["loss"] else None,
        "loss_last": stats["loss"][-1] if stats["loss"] else None,
        "quality": quality(encoder, tower, spec.arch, spec.seed, spec.quality_prompts),
    }
    return encoder, report


def stretch_positions(clip: TextEncoder, arch: TinyArch, seed: int = 0) -> TextEncoder:
    """A LongCLIP-shaped encoder from a CLIP one: keep the first positions, interpolate the rest."""
    longclip = random_encoder(arch, seed=seed)
    state = clip.model.state_dict()
    old = state["text_model.embeddings.position_embedding.weight"]
    state["text_model.embeddings.position_embedding.weight"] = stretched(old, arch.max_length)
    longclip.model.load_state_dict(state)
    return longclip


def stretched(pos: torch.Tensor, length: int, keep: int = KEEP_POSITIONS) -> torch.Tensor:
    """Positions [n, D] → [length, D]: rows < keep unchanged, the rest linearly interpolated."""
    n = pos.shape[0]
    # fractional source index of each new position beyond `keep`
    src = keep + (torch.arange(length - keep, dtype=pos.dtype) * (n - 1 - keep) / (length - keep - 1))
    lo = src.floor().long().clamp(max=n - 2)
    frac = (src - lo).unsqueeze(-1)
    tail = pos[lo] * (1 - frac) + pos[lo + 1] * frac
    return torch.cat([pos[:keep], tail])


@torch.no_grad()
def quality(encoder: TextEncoder, tower: PairedTower, arch: TinyArch, seed: int, n: int = 200) -> dict:
    """Held-out evidence that the base is pretrained, not random.

    assimilation: mean pairwise token cosine of clean prompts, against a random-init encoder of the
    same config; spearman: rank agreement of pairwise text_embeds similarities with MiniLM's.
    """
    from scipy.stats import spearmanr

    prompts = generate_synthetic_prompts(n, seed=HELD_OUT_SEED)
    ids = encoder.tokenize(prompts)
    random_init = random_encoder(arch, seed=seed + 1)
    emb = torch.nn.functional.normalize(encoder.text_embeds(ids), dim=-1)
    ref = tower.embed(prompts)
    upper = torch.triu_indices(n, n, offset=1)
    rho = spearmanr((emb @ emb.T)[upper[0], upper[1]].numpy(), (ref @ ref.T)[upper[0], upper[1]].numpy())[0]
    return {
        "assimilation": round(assimilation(encoder(ids)).mean().item(), 4),
        "assimilation_random_init": round(assimilation(random_init(random_init.tokenize(prompts))).mean().item(), 4),
        "spearman_vs_minilm": round(float(rho), 4),
        "held_out_prompts": n,
    }


def base_path(name: str, progress: bool = True) -> Path:
    """Directory of the tiny base called `name` (built on first use)."""
    return get_base(spec_by_name(name), progress)
