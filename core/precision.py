"""How the loops compute: `precision` in the config, one of fp32 | tf32 | bf16.

- fp32: strict float32 (the default; every figure in docs/ so far);
- tf32: float32 tensors, matrix products on TF32 tensor cores (CUDA only: a CPU has no TF32);
- bf16: autocast to bfloat16 for the matrix products (weights, optimiser states and v stay float32;
  on a CPU with AMX-BF16 or AVX512-BF16 it runs there too).
The landscape always runs in float64 (amdet/landscape.py leaves autocast), since its second
differences divide rounding noise by h². A result's `compute` record names the precision, it is part
of a model's and a record's settings key when it is not fp32, and a sweep refuses to mix precisions.
"""

from __future__ import annotations

import contextlib

import torch

from core.provenance import config_hash

PRECISIONS = ("fp32", "tf32", "bf16")


def device_of(cfg) -> torch.device:
    try:  # a result records its device (result.json "compute"): it must name one
        return torch.device(cfg.get("device") or "cpu")
    except RuntimeError:
        raise ValueError(f"unknown device '{cfg.get('device')}'; set device to cpu, cuda or cuda:N") from None


def precision_of(cfg) -> str:
    """The config's precision, checked against its device (one-line errors)."""
    device = device_of(cfg)
    precision = str(cfg.get("precision") or "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; set precision= one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision=tf32 needs a CUDA device (a CPU has no TF32); use fp32 or bf16 on the CPU")
    return precision


def keyed_by_precision(key: str, cfg) -> str:
    """A settings key that also names the precision when it is not fp32 (fp32 keys stay as they were
    before the setting existed, so earlier results and models are still found)."""
    precision = precision_of(cfg)
    return key if precision == "fp32" else config_hash([key, precision])


@contextlib.contextmanager
def computing_in(cfg):
    """The block computes in the config's precision on its device; the previous settings come back after."""
    precision, device = precision_of(cfg), device_of(cfg).type
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield precision
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


@contextlib.contextmanager
def full_precision():
    """A block that computes in its tensors' own dtype, even inside `computing_in(bf16)` (the landscape)."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield
