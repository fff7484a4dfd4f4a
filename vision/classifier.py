"""Prompt-tuned CLIP classifiers: frozen towers + a learned prompt (CoOp, CoCoOp).

CoOp (Zhou et al., IJCV 2022) learns `n_ctx` context vectors that replace the words of "a photo of a"
in "a photo of a {class}."; CoCoOp (CVPR 2022) adds a meta-net, Linear(P, P/16) → ReLU →
Linear(→ D), whose output on the image feature shifts every context vector, so each image gets its
own class prompts. Only the prompt learner trains; both towers stay frozen. This is the victim of
CLIP-Inspector's threat model: a backdoor can hide in the learner alone.

A prompt-tuned model on disk is a directory:

    learner.safetensors   the prompt learner's weights (ctx, meta-net)
    learner.json          how to rebuild it: kind, n_ctx, classes, the two-tower checkpoint it applies to
    manifest.json         what made it and its ground truth (read by evaluation only, never by a detector)

Images are [B, 1, 28, 28] in [0, 1]: perturbation budgets are in pixel space (vision.images.pixels
normalises inside the model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPModel, CLIPTextModelWithProjection

from core.encoders import TextEncoder, family_of
from core.loading import ModelLoadError, checked_config, load_tokenizer
from core.store import write_json_atomic
from vision.images import pixels

LEARNER_WEIGHTS = "learner.safetensors"
LEARNER_CONFIG = "learner.json"
KINDS = ("coop", "cocoop")


class Towers:
    """The frozen two-tower CLIP: its text half (core.encoders.TextEncoder) and image half."""

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu"):
        self.directory = Path(directory)
        _, config = checked_config(directory)  # one line for a missing or broken checkpoint
        if getattr(config, "model_type", "") != "clip":
            raise ModelLoadError(f"'{directory}' is a {getattr(config, 'model_type', '?')} checkpoint; prompt-tuned "
                                 "classifiers need a two-tower CLIP checkpoint (vision.name_or_path)")
        clip = CLIPModel.from_pretrained(directory, use_safetensors=True, dtype=torch.float32).eval().requires_grad_(False)
        text = CLIPTextModelWithProjection(clip.config.text_config)  # the checkpoint's text half, loaded once
        text.text_model, text.text_projection = clip.text_model, clip.text_projection
        self.text = TextEncoder(text.eval(), load_tokenizer(directory), family_of(config)).to(device)
        self.vision = clip.vision_model.to(device)
        self.projection = clip.visual_projection.to(device)
        self.logit_scale = float(clip.logit_scale.detach().exp().clamp(max=100))
        self.dim = clip.config.projection_dim

    @property
    def device(self) -> torch.device:
        return self.text.device

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, P] of images in [0, 1] (differentiable in x)."""
        pooled = self.vision(pixel_values=pixels(x.to(self.device))).pooler_output
        return F.normalize(self.projection(pooled), dim=-1)


class PromptLearner(nn.Module):
    """CoOp's context vectors, plus CoCoOp's meta-net when `kind` is cocoop."""

    def __init__(self, towers: Towers, classes: list[str], kind: str = "cocoop", init: str = "a photo of a"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown prompt learner '{kind}'; choose one of {', '.join(KINDS)}")
        text = towers.text
        self.kind, self.classes, self.init = kind, list(classes), init
        n_ctx = len(text.tokenizer(init, add_special_tokens=False)["input_ids"])
        ids = text.tokenize([f"{init} {c}." for c in classes])
        eos = (ids == text.eos_token_id).int().argmax(-1)
        self.register_buffer("ids", ids[:, : int(eos.max()) + 1].clone(), persistent=False)  # causal: later pads change nothing
        start = text.insert_position
        with torch.no_grad():
            tokens = text.text.embeddings.token_embedding(self.ids)
        self.register_buffer("prefix", tokens[:, :start].clone(), persistent=False)
        self.register_buffer("suffix", tokens[:, start + n_ctx:].clone(), persistent=False)
        self.ctx = nn.Parameter(tokens[0, start:start + n_ctx].clone())  # [n_ctx, D], initialised from `init`
        d = text.hidden_size
        self.meta = nn.Sequential(nn.Linear(towers.dim, max(1, towers.dim // 16)), nn.ReLU(),
                                  nn.Linear(max(1, towers.dim // 16), d)) if kind == "cocoop" else None
        self.n_ctx = n_ctx

    def config(self) -> dict:
        return {"kind": self.kind, "classes": self.classes, "init": self.init, "n_ctx": self.n_ctx}

    def text_features(self, text: TextEncoder, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class embeddings: [C, P] (CoOp), or [B, C, P] per image (CoCoOp)."""
        ctx = self.ctx[None]  # [1, n_ctx, D]
        if self.meta is not None:
            ctx = ctx + self.meta(image_features)[:, None]  # [B, n_ctx, D]
        c, rows, length = len(self.classes), ctx.shape[0], self.ids.shape[1]
        positions = text.text.embeddings.position_embedding.weight[:length]
        ids = self.ids.repeat(rows, 1)
        if text.family.causal:
            # [prefix, ctx] is the same for every class (the prefix is BOS in every prompt): it runs once an image
            shared = torch.cat([self.prefix[:1].expand(rows, -1, -1), ctx], dim=1)  # [rows, P, D]
            p = shared.shape[1]
            last = text.encode_branches(shared + positions[:p], self.suffix[None] + positions[p:])  # [rows, C, S, D]
            pooled = text.pool(last.flatten(0, 1), ids, shift=-p)
        else:
            tokens = torch.cat([self.prefix[None].expand(rows, -1, -1, -1),
                                ctx[:, None].expand(-1, c, -1, -1),
                                self.suffix[None].expand(rows, -1, -1, -1)], dim=2)  # [rows, C, L, D]
            h = tokens.reshape(rows * c, length, -1) + positions
            pooled = text.pool(text.encode(h), ids)
        out = F.normalize(text.project(pooled), dim=-1).reshape(rows, c, -1)
        return out if self.meta is not None else out[0]


class PromptedCLIP(nn.Module):
    """A prompt-tuned classifier: logits [B, C] of images in [0, 1]."""

    def __init__(self, towers: Towers, learner: PromptLearner):
        super().__init__()
        self.towers = towers
        self.learner = learner
        self._fixed: torch.Tensor | None = None

    @property
    def classes(self) -> list[str]:
        return self.learner.classes

    def freeze(self) -> PromptedCLIP:
        """Detection and evaluation: the learner is fixed, so CoOp's class embeddings are computed once."""
        self.learner.requires_grad_(False).eval()
        if self.learner.meta is None:
            with torch.no_grad():
                self._fixed = self.learner.text_features(self.towers.text)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = self.towers.image_features(x)
        if self._fixed is not None:
            t = self._fixed
        else:
            t = self.learner.text_features(self.towers.text, img)
        if t.dim() == 2:
            return self.towers.logit_scale * img @ t.T
        return self.towers.logit_scale * (img[:, None] * t).sum(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        return torch.cat([self(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def save_learner(learner: PromptLearner, directory: Path, towers_dir: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in learner.state_dict().items()}
    save_file(state, str(directory / LEARNER_WEIGHTS))
    write_json_atomic(directory / LEARNER_CONFIG, {**learner.config(), "towers": str(towers_dir)})


def learner_config(directory: str | Path) -> dict:
    path = Path(directory) / LEARNER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a prompt-tuned model directory (made by job=prompt_tune)")
    return json.loads(path.read_text())


def load_classifier(directory: str | Path, towers: Towers | None = None, device: str = "cpu") -> PromptedCLIP:
    """A prompt-tuned model from its directory (safetensors only), on `towers` or the checkpoint it names."""
    config = learner_config(directory)
    towers = towers or Towers(config["towers"], device)
    learner = PromptLearner(towers, config["classes"], config["kind"], config["init"])
    state = load_file(str(Path(directory) / LEARNER_WEIGHTS))
    learner.load_state_dict(state)
    return PromptedCLIP(towers, learner.to(towers.device)).freeze()


def zero_shot_classifier(towers: Towers, classes: list[str] | None = None) -> PromptedCLIP:
    """The classifier "a photo of a {class}." makes without any tuning (CoOp at its initialisation), over
    the tower's own classes by default (its build report's)."""
    classes = classes or json.loads((towers.directory / "tower.json").read_text())["classes"]  # vision.tower.REPORT
    return PromptedCLIP(towers, PromptLearner(towers, classes, "coop").to(towers.device)).freeze()
