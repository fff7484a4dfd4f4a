"""Loading is safe and every bad input fails in one line that names the problem and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.loading import ModelLoadError, is_hub_id, load_encoder
from core.tiny.bases import encoder_config, spec_by_name
from core.tiny.paired_tower import minilm_dir
import sweeps.naming  # noqa: F401  (registers the configs' resolvers)

REPO = Path(__file__).resolve().parent.parent


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.fixture
def saved(micro_encoder, tmp_path):
    micro_encoder.save(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("family", ["clip"])
def test_pickled_weights_are_refused(saved):
    (saved / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, saved / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as exc:
        load_encoder(saved)
    msg = one_line(exc)
    assert "pytorch_model.bin" in msg and "refusing" in msg and "safetensors" in msg


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        load_encoder(tmp_path / "nope")
    msg = one_line(exc)
    assert "does not exist" in msg and str(tmp_path / "nope") in msg


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        load_encoder(tmp_path)
    assert "config.json" in one_line(exc)


@pytest.mark.parametrize("family", ["siglip"])
def test_corrupt_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError) as exc:
        load_encoder(saved)
    assert "corrupt" in one_line(exc)


def test_unsupported_architecture_is_named():
    """A BERT directory (MiniLM) is a valid HF model, but not a text encoder we can scan."""
    with pytest.raises(ModelLoadError) as exc:
        load_encoder(minilm_dir())
    assert "unsupported encoder type 'bert'" in one_line(exc)


@pytest.mark.parametrize("family", ["clip"])
def test_manifest_never_read_by_loader(saved):
    """Ground truth lives in manifest.json; the loader must not depend on it at all."""
    (saved / "manifest.json").write_text("{ this is not json")
    assert load_encoder(saved).family.name == "clip"


def test_hub_ids_and_paths():
    assert is_hub_id("openai/clip-vit-large-patch14")
    assert not is_hub_id("./models/clip")
    assert not is_hub_id("/abs/dir")
    assert not is_hub_id("a/b/c")


def test_unknown_encoder_name():
    with pytest.raises(ValueError) as exc:
        encoder_config("tiny-foo")
    msg = one_line(exc)
    assert "unknown encoder 'tiny-foo'" in msg and "tiny-clip" in msg and "tiny-siglip" in msg


def test_real_encoder_is_not_a_tiny_base():
    with pytest.raises(ValueError, match="not a tiny base"):
        spec_by_name("clip-l")


def run_launch(*overrides):
    return subprocess.run([sys.executable, "launch.py", *overrides, "hydra.run.dir=${oc.env:TMPDIR,/tmp}/amdet-test"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_unknown_encoder_in_job_fails_in_one_line():
    done = run_launch("job=bases", "job.encoders=[tiny-foo]")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if "tiny-foo" in line]
    assert errors and "unknown encoder 'tiny-foo'" in errors[0] and "choose one of" in errors[0]
    assert "Traceback" not in done.stderr


def test_cli_unknown_encoder_group_names_it():
    done = run_launch("encoder=tiny-foo")
    assert done.returncode != 0
    assert "encoder/tiny-foo" in done.stderr and "tiny-clip" in done.stderr


def test_cli_composes_and_refuses_bad_input_before_loading_torch():
    """launch.py names the jobs and core.runtime by path, and the real-shape resolvers their builder: a
    typo in an override is answered in about a second, not after torch and transformers load (7 s)."""
    done = subprocess.run([sys.executable, "-c", "import sys, launch; print(sorted({'torch', 'transformers'} & set(sys.modules)))"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_cli_zero_threads_fails_in_one_line():
    done = run_launch("job=bases", "threads=0")
    assert done.returncode == 2 and "threads must be a positive number of CPU threads (or null), got 0" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_the_real_shape_resolvers_reach_their_builder_by_path(monkeypatch, tmp_path):
    monkeypatch.setenv("AMDET_CACHE", str(tmp_path))
    images = Path(OmegaConf.create({"images": "${real_shape_images:[cat]}"}).images)
    assert images.parent == tmp_path / "real_shapes" and (images / "captions.json").is_file()
