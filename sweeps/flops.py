"""The FLOP cost model of a cell: how many floating-point operations each phase does, from the encoder's
shape and the cell's settings, and what that costs on a named GPU.

Every phase is counted in rows through the text encoder (one prompt of `positions` tokens):
- a forward row costs F = 2·P·L + 4·layers·L²·d (P: the layers' weights, L: positions, d: width);
- a training row (forward + backward with weight gradients) costs 3F; an inversion row, whose
  backward needs only the input's gradient (v), 2F.
The rows per phase follow the code (see `cell_flops`); where the count depends on the data (how many
check passes a scan makes before it decides) the assumption is named in the phase's note. GPU time is
FLOPs / (the GPU's dense peak at the precision × an achieved fraction): the fraction is an
assumption until `benchmarks/gpu.py` has measured it on that GPU (`--mfu` / `measured_mfu`).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.real_shapes import SHAPES

# dense peak TFLOP/s from the vendors' data sheets (no sparsity); the landscape runs in float64
GPUS: dict[str, dict[str, float]] = {
    "h100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp64": 67.0},
    "h200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp64": 67.0},
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp64": 19.5},
    "l40s": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.1, "fp64": 1.4},
    "rtx4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp64": 1.3},
}
# achieved share of the peak, assumed: rows of 77 tokens in batches of 10 keep a large GPU far from
# its peak (launch-bound kernels); replace by benchmarks/gpu.py's measurement for your GPU
ASSUMED_MFU = 0.25
CHECKED_SHARE = 0.5  # assumed: the share of a scan's steps that run a check pass (past loss_start)


@dataclass(frozen=True)
class TransformerShape:
    layers: int
    width: int
    ffn: int
    positions: int
    vocab: int = 0  # text encoders: the embedding table's rows (the vocabulary screen tries each)

    @property
    def layer_params(self) -> int:
        return self.layers * (4 * self.width**2 + 2 * self.width * self.ffn)

    @property
    def forward(self) -> float:
        """F: FLOPs of one row's forward pass (matrix products and attention; norms and softmax left out)."""
        return self.forward_at(self.positions)

    def forward_at(self, positions: int) -> float:
        """One row's forward pass cut to its first `positions` tokens."""
        return 2.0 * self.layer_params * positions + 4.0 * self.layers * positions**2 * self.width


def text_shape(config: dict) -> TransformerShape:
    """From a transformers text config (as a dict)."""
    return TransformerShape(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                            config["max_position_embeddings"], config["vocab_size"])


def vision_shape(config: dict) -> TransformerShape:
    patches = (config["image_size"] // config["patch_size"]) ** 2
    return TransformerShape(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"], patches + 1)


@dataclass(frozen=True)
class Phase:
    name: str
    flops: float
    precision: str  # "model": the run's precision; "fp64": always float64 (the landscape)
    note: str


def cell_flops(cfg, kind: str, text: TransformerShape) -> list[Phase]:
    """FLOPs per phase of one cell (`cfg`: the cell's composed config) for an encoder of shape `text`."""
    F = text.forward
    phases: list[Phase] = []
    if kind == "backdoor":
        a, t = cfg.training.attack, cfg.attack
        rows = a.clean_batch + a.poison_batch * t.triggers.count
        phases.append(Phase("attack", a.steps * (3 * F * rows + F * a.clean_batch), "model",
                            f"{a.steps} steps × {rows} training rows, f0 of the clean batch"))
        phases.append(Phase("attack evaluation", 10 * F * t.eval_prompts, "model",
                            f"{t.eval_prompts} held-out prompts: clean, triggered, 3 positions, both models"))
    else:
        b, hb = cfg.benign, cfg.training.benign
        steps = b.checkpoint_every if b.mode == "checkpoints" else b.steps
        phases.append(Phase("benign fine-tuning", steps * 3 * F * hb.batch_size, "model",
                            f"{steps} steps × {hb.batch_size} rows ({b.mode}: a checkpoint's share of its run)"))
    s, inv = cfg.scan, cfg.scan.inversion
    test = round(s.prompts * inv.test_share)
    train = s.prompts - test
    batches = -(-train // inv.batch_size)
    anchor = 2 if s.weights.anchor else 1  # the anchor term runs v through the anchor too
    phases.append(Phase("shallow features", 2 * F * s.prompts, "model", f"{s.prompts} prompts, model and anchor"))
    if inv.init == "vocabulary":
        others = min(inv.screen_keep or text.vocab, text.vocab)  # the first prompt's best, on the other prompts
        rows = text.vocab + others * (inv.screen_prompts - 1)
        screen = rows * text.forward_at(min(inv.screen_positions, text.positions))
        phases.append(Phase("vocabulary screen", screen + inv.screen_candidates * inv.batch_size * F * anchor, "model",
                            f"{text.vocab} tokens on 1 prompt + {others} on {inv.screen_prompts - 1} more, cut to "
                            f"{inv.screen_positions} positions, then {inv.screen_candidates} on {inv.batch_size} whole prompts"))
    phases.append(Phase("inversion", inv.epochs * train * 2 * F * anchor, "model",
                        f"{inv.epochs} epochs × {train} rows, input gradients only"))
    share = 1.0 if cfg.cell.observe else CHECKED_SHARE  # a calibration cell checks from its first step
    checks = inv.epochs * batches / inv.check_every * share
    why = "a calibration cell: every check" if cfg.cell.observe else f"assumed: {share:.0%} of steps checked"
    phases.append(Phase("checks", checks * test * 2 * F, "model", f"{checks:.0f} passes over {test} test prompts ({why})"))
    score = inv.score_steps if inv.score_steps is not None else batches
    phases.append(Phase("score", score * inv.batch_size * 2 * F * anchor, "model", f"{score} plain inversion steps"))
    if s.landscape.undecided or cfg.cell.observe or kind == "backdoor":  # else a benign scan, undecided: none
        phases.append(Phase("landscape", s.landscape.points**2 * 2 * F, "fp64",
                            f"{s.landscape.points}² points × 2 models, float64"))
    detectors = set(cfg.cell.detectors)
    if "gcg" in detectors:
        g = cfg.detector.gcg
        phases.append(Phase("gcg", g.steps * (g.batch * 2 * F * anchor + g.candidates * g.batch * F * anchor), "model",
                            f"{g.steps} steps: a gradient and {g.candidates} candidates on {g.batch} prompts"))
    if "output_drift" in detectors:
        phases.append(Phase("output drift", 2 * F * cfg.detector.output_drift.prompts, "model", "both models"))
    return phases


def image_flops(cfg, encoder: str) -> Phase | None:
    """The image side, once per sweep (cached embeddings): COCO pairs and Text-on-Pair concepts."""
    shape = SHAPES.get(encoder)  # the real encoders' configs are named as their conf/encoder options
    if shape is None:
        return None
    images = cfg.benign.pairs.limit or 5000  # val2017's 5,000 images when no limit is set
    return Phase("image embeddings (once)", vision_shape(shape.vision).forward * images, "model",
                 f"{images} images through the {shape.name} image tower, cached for every cell")


def gpu_seconds(phases: list[Phase], gpu: str, precision: str = "bf16", mfu: float = ASSUMED_MFU) -> float:
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU '{gpu}'; choose one of {', '.join(GPUS)}")
    peak = GPUS[gpu]
    return sum(p.flops / (peak["fp64" if p.precision == "fp64" else precision] * 1e12 * mfu) for p in phases)


def encoder_text_shape(encoder: str) -> TransformerShape | None:
    """The text shape of a named real encoder (core.real_shapes holds their configurations)."""
    shape = SHAPES.get(encoder)
    return None if shape is None else text_shape(shape.text)
