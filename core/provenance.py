"""What made a result: code version, package versions, hardware — recorded with every artefact."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
# what a result can depend on: the models (torch, transformers, tokenizers), the images (pillow renders the tiny
# world's letters and captions), the statistics (scipy), the harness
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "hydra-core", "submitit", "numpy", "pandas", "pillow",
            "scipy")


def config_hash(obj, length: int = 16) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def settings_hash(cfg, keys, ignore=()) -> str:
    """config_hash of the resolved settings under `keys` (top-level or dotted names, e.g.
    "training.attack", kept nested; absent ones skipped) less the dotted `ignore` paths: the key of
    everything an artefact (a cell's result, a stored model) depends on, and of nothing else."""
    absent = object()
    settings: dict = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is absent:
            continue
        *parents, leaf = key.split(".")
        node = settings
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    for dotted in ignore:
        *parents, leaf = dotted.split(".")
        node = settings
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return config_hash(settings)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model weights are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def source_hash(*relative_paths: str) -> str:
    """Hash of the source files that determine an artefact, so a code change invalidates its cache."""
    digest = hashlib.sha256()
    for rel in sorted(relative_paths):
        for path in sorted((REPO_ROOT / rel).rglob("*")) if (REPO_ROOT / rel).is_dir() else [REPO_ROOT / rel]:
            if path.suffix in (".py", ".yaml", ".json", ".txt") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The git commit (and whether the tree had uncommitted changes), when run from a checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode == 0:
            dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
            return {"git_commit": sha.stdout.strip(), "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": None, "git_dirty": None}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo's "model name"; platform.processor() says only "x86_64" there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    import torch

    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        # the CPU kernels torch dispatches to (e.g. AVX512, AVX2): they round differently, so a tiny world built on
        # one machine is not bit-identical to one built on another (docs/figures.md, "CLIP-Inspector's embedded study")
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict:
    """Everything needed to say which code on which machine produced an artefact."""
    return {"code": code_version(), "packages": package_versions(), "hardware": hardware()}


def compute_record(cfg) -> dict:
    """How a result was computed, for its result.json: the device as resolved ("cuda" → "cuda:0"),
    the precision and torch's CPU threads. Results computed on another device type or in another
    precision differ beyond float noise, so a sweep refuses to mix them (`compute_mismatch`);
    thread counts change only the order of reductions and are recorded, not refused."""
    device = torch.device(cfg.get("device") or "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return {"device": str(device), "precision": cfg.get("precision", "fp32"), "threads": torch.get_num_threads()}


def compute_mismatch(recorded: dict | None, cfg) -> tuple[str, str, str] | None:
    """(what, recorded, current) when a result's `compute` record differs from how `cfg` computes in
    device type or precision; None when they agree or the result predates the record. Reads the
    config alone (initialises no GPU), so a sweep can check before its workers start."""
    if not recorded:
        return None
    pairs = (("device type", torch.device(recorded["device"]).type, torch.device(cfg.get("device") or "cpu").type),
             ("precision", recorded.get("precision", "fp32"), cfg.get("precision", "fp32")))
    return next(((what, was, now) for what, was, now in pairs if was != now), None)
