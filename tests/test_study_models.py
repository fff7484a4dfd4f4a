"""Slow: the study's own models on the pretrained tiny bases (the bases the main job builds)."""

from __future__ import annotations

import pytest

from attacks import job as attack_job
from benign_ft import job as benign_job
from tests.helpers import compose_config

pytestmark = pytest.mark.slow


def test_tiny_clip_backdoor_meets_the_attack_targets(tmp_path):
    """Default tiny settings: attack success ≥ 0.9, clean utility ≥ 0.85, and the Fig. 2 effect."""
    cfg = compose_config("job=attack", "progress=false", f"job.out={tmp_path}/model")
    m = attack_job.run(cfg)["metrics"]
    assert m["asr"] >= 0.9 and m["utility"] >= 0.85, m
    assert m["assimilation_triggered"] > m["assimilation_clean"] + 0.1, m


@pytest.mark.parametrize("encoder", ["tiny-clip", "tiny-longclip", "tiny-siglip"])
def test_benign_models_from_every_tiny_base(tmp_path, encoder):
    cfg = compose_config("job=benign", f"encoder={encoder}", "progress=false", f"job.out={tmp_path}/run",
                         "benign.models=2", "benign.checkpoint_every=5", "benign.train_prompts=400")
    manifests = benign_job.run(cfg)["manifests"]
    assert [m["step"] for m in manifests] == [5, 10]
    for m in manifests:
        assert m["kind"] == "benign" and m["encoder"] == encoder and m["provenance"]["code"]
        # moved (not a no-op) but not destroyed: at lr 1.5e-3 tiny-clip sits at ≈0.50 from step 5 on
        assert 0.25 < m["metrics"]["cosine_to_base"] < 0.99, m["metrics"]
