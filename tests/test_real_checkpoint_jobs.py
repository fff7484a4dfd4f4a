"""The real-encoder paths of both jobs, on a tiny random two-tower CLIP checkpoint saved locally:
Text-on-Pair targets from a folder of images, benign fine-tuning on COCO-style pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from attacks import job as attack_job
from benign_ft import job as benign_job
from core.image_tower import concept_embedding, load_image_tower
from core.tiny.tokenizer import clip_tokenizer
from tests.helpers import MICRO_ATTACK, compose_config

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A CLIPModel over the real CLIP BPE (so prompts tokenize as with openai/clip-vit-large-patch14)."""
    directory = tmp_path_factory.mktemp("clip-two-tower")
    tokenizer = clip_tokenizer(77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(SMALL, vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(SMALL, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def noise_image(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def real_encoder(checkpoint):
    return ["encoder=clip-l", f"encoder.name_or_path={checkpoint}", "progress=false"]


def test_text_on_pair_targets_the_image_folder(tmp_path, checkpoint):
    concept = tmp_path / "images" / "golden_retriever"
    concept.mkdir(parents=True)
    for i in range(3):
        noise_image(concept / f"{i}.png", i)
    cfg = compose_config("job=attack", *real_encoder(checkpoint), *MICRO_ATTACK, "attack=text_on_pair",
                         "attack.targets.fixed=[golden retriever]", f"attack.targets.image_dir={tmp_path}/images",
                         f"job.out={tmp_path}/model")
    stored = attack_job.run(cfg)
    (b,) = stored["backdoors"]
    assert b["target"]["shape"] == [16] and str(concept) in b["target"]["source"]
    assert stored["config"]["training"]["attack"]["backdoor_weight"] == 0.1, "real encoders get the paper's λ"
    expected = concept_embedding(load_image_tower(checkpoint), concept)
    mean = F.normalize(load_image_tower(checkpoint).embed_images(sorted(concept.iterdir())), dim=-1).mean(0)
    assert torch.allclose(expected, mean, atol=1e-6)


def test_missing_image_folder_fails_before_training(tmp_path, checkpoint):
    cfg = compose_config("job=attack", *real_encoder(checkpoint), *MICRO_ATTACK, "attack=text_on_pair",
                         "attack.targets.fixed=[cat]", f"attack.targets.image_dir={tmp_path}/nowhere",
                         f"job.out={tmp_path}/model")
    with pytest.raises(FileNotFoundError, match=r"image folder for target concept 'cat' not found: .*nowhere/cat"):
        attack_job.run(cfg)
    assert not (tmp_path / "model").exists()


def test_benign_fine_tuning_on_coco_pairs(tmp_path, checkpoint):
    images = tmp_path / "val2017"
    images.mkdir()
    captions = ["a dog on a beach", "two cats on a sofa", "a red bus in the city", "a bowl of fruit",
                "a man riding a horse", "a plane in the sky"]
    annotations = {
        "images": [{"id": i, "file_name": noise_image(images / f"{i:012d}.jpg", i).name} for i in range(3)],
        "annotations": [{"id": k, "image_id": k % 3, "caption": c} for k, c in enumerate(captions)],
    }
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    cfg = compose_config("job=benign", *real_encoder(checkpoint), f"job.out={tmp_path}/run",
                         f"benign.pairs.annotation_file={tmp_path}/captions.json", f"benign.pairs.image_dir={images}",
                         "benign.models=2", "benign.checkpoint_every=2", "benign.eval_prompts=8",
                         "training.benign.batch_size=4", "training.benign.lr=1e-3")
    result = benign_job.run(cfg)
    manifests = result["manifests"]
    assert [m["step"] for m in manifests] == [2, 4]
    assert "6 captions, 3 images" in manifests[0]["pairs"]
    assert manifests[1]["metrics"]["cosine_to_base"] < 1


def test_benign_on_a_real_encoder_needs_pairs(tmp_path, checkpoint):
    cfg = compose_config("job=benign", *real_encoder(checkpoint), f"job.out={tmp_path}/run")
    with pytest.raises(ValueError, match="set benign.pairs.annotation_file"):
        benign_job.run(cfg)
