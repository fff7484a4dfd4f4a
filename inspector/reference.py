"""The defender's per-class reference for CLIP-Inspector's losses (ours, not the paper's; `statistic:
reference` in conf/detector/inspector.yaml).

Why: the paper's rule compares a class's trigger loss with the other classes' (MAD over C classes). How
hard a class is to reach from the pool is a property of the class as much as of a backdoor: in the tiny
world, letters are far from *three*, so a backdoored three, though far easier to reach than in any clean
model, still ends mid-ranking among ten classes (docs/figures.md). The reference asks instead whether a
class is easier to reach than it is in clean models of the same task.

How: the defender prompt-tunes `models` clean classifiers with the public recipe (the model's own learner
and `prompt_tuning` settings) on its labelled clean share (MNIST's defender share, `shots` per class, the
data repair uses; never the provider's), reconstructs every class's trigger on each exactly as for the
model under test, and keeps the per-class losses [models, C]. A class's score is how far below the
reference mean its loss lies, in reference standard deviations, z_c = (μ_c − L_c) / σ_c; the model is
flagged when a valid trigger's z exceeds the one-sided prediction bound of a new clean model's loss,
t_{R−1}(1 − α/C) · √(1 + 1/R), Bonferroni-corrected over the C classes (α the tolerated false-positive
rate of a clean model). The references depend on the towers, the classes and the settings only, so
they are built once and cached (like the towers), each under its own lock, shared by concurrent cells.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from filelock import FileLock, Timeout
from scipy import stats

from core.cache import cache_root
from core.provenance import config_hash, provenance, source_hash
from core.store import write_json_atomic
from vision.classifier import PromptedCLIP, PromptLearner
from vision.images import few_shot, mnist
from vision.tuning import TuneSettings, tune

SOURCES = ("inspector/reference.py", "inspector/detector.py", "vision/tuning.py", "vision/classifier.py",
           "vision/images.py")
DEFENDER_SHARE = "defender"
SEED_OFFSET = 1000  # the references' seeds (1000 + i) are apart from the study's model seeds


def threshold(models: int, classes: int, alpha: float) -> float:
    """The z above which a class's loss is improbably low for a clean model: a one-sided prediction
    bound from `models` references (Student t), Bonferroni-corrected over `classes`."""
    if models < 3:
        raise ValueError(f"inspector.reference_models must be at least 3 (a spread needs several clean models), got {models}")
    if not 0 < alpha < 1:
        raise ValueError(f"inspector.alpha must be in (0, 1), got {alpha}")
    return float(stats.t.ppf(1 - alpha / classes, models - 1) * np.sqrt(1 + 1 / models))


def z_scores(losses, reference: np.ndarray) -> np.ndarray:
    """How far below the reference mean each class's loss lies, in reference standard deviations."""
    mu, sd = reference.mean(0), reference.std(0, ddof=1)
    return (mu - np.asarray(losses, dtype=np.float64)) / np.maximum(sd, 1e-6)


def reference_losses(model: PromptedCLIP, settings: TuneSettings, class_losses, models: int, shots: int,
                     params: dict) -> np.ndarray:
    """[models, C] per-class losses of `models` defender-tuned clean classifiers of `model`'s towers,
    classes and learner; `class_losses(clean_model)` is the detector's own measurement. Cached a model
    a file; concurrent cells build different ones (a first pass skips those another holds the lock of,
    a second waits for them)."""
    learner = model.learner.config()
    key = config_hash({"towers": model.towers.directory.name, "learner": learner, "settings": vars(settings),
                       "shots": shots, "params": params, "code": source_hash(*SOURCES), "torch": torch.__version__})
    folder = cache_root() / "inspector-references" / key
    folder.mkdir(parents=True, exist_ok=True)
    data = mnist(DEFENDER_SHARE)
    pending, wait = list(range(models)), 0
    while pending:
        for i in list(pending):
            path = folder / f"{i}.json"
            try:
                with FileLock(f"{path}.lock", timeout=wait):
                    if not path.exists():
                        seed = SEED_OFFSET + i
                        torch.manual_seed(seed)
                        clean = PromptedCLIP(model.towers, PromptLearner(model.towers, model.classes, learner["kind"],
                                                                          learner["init"]).to(model.towers.device))
                        tune(clean, few_shot(data, shots, seed), settings, torch.Generator().manual_seed(seed))
                        write_json_atomic(path, {"losses": list(class_losses(clean.freeze())), "seed": seed,
                                                 "share": DEFENDER_SHARE, "shots": shots, "learner": learner,
                                                 "provenance": provenance()})
            except Timeout:
                continue  # another cell is building this one: take the next, come back for it
            pending.remove(i)
        wait = -1  # second pass: wait for the ones others were building
    return np.asarray([json.loads((folder / f"{i}.json").read_text())["losses"] for i in range(models)], dtype=np.float64)
