"""What a scan leaves behind beside its record: tensors as safetensors, and plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

TI_TOKEN = "<amdet-v>"  # placeholder token of the Textual-Inversion embedding


def write_artifacts(out: Path, result: dict) -> dict[str, str]:
    """v, the reversed target feature, v as a Textual-Inversion embedding, the landscape and plots."""
    out.mkdir(parents=True, exist_ok=True)
    land = result["landscape"]
    save_file({"v": result["v"].contiguous()}, out / "v.safetensors")
    save_file({"reversed_feature": result["reversed_feature"].contiguous()}, out / "reversed_feature.safetensors")
    # diffusers' load_textual_inversion reads {token: [k, D]} from a safetensors file
    save_file({TI_TOKEN: result["v"].contiguous()}, out / "learned_embeds.safetensors")
    files = {"v": "v.safetensors", "reversed_feature": "reversed_feature.safetensors",
             "textual_inversion": "learned_embeds.safetensors"}
    if "grid" in land:  # none where nothing was computed (scan.NO_LANDSCAPE)
        save_file({k: land[k].contiguous() for k in ("alphas", "grid", "eigenvalues")}, out / "landscape.safetensors")
        surface_plot(land, out / "landscape.png")
        spectrum_plot(land, out / "hessian_spectrum.png")
        files.update(landscape="landscape.safetensors", landscape_plot="landscape.png",
                     hessian_spectrum_plot="hessian_spectrum.png")
    return files


def surface_plot(land: dict, path: Path) -> None:
    a = land["alphas"].numpy()
    x, y = torch.meshgrid(land["alphas"], land["alphas"], indexing="ij")
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(x.numpy(), y.numpy(), land["grid"].numpy(), cmap="viridis", linewidth=0)
    ax.set_xlabel("α (−∇ direction)")
    ax.set_ylabel("β (random direction)")
    ax.set_zlabel("inversion loss")
    ax.set_title(f"loss landscape around v (span ±{a[-1]:.2g}); positive ratio {land['positive_ratio']:.2f}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def spectrum_plot(land: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(land["eigenvalues"].numpy(), bins=60, color="tab:blue")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Hessian eigenvalue (2×2, central differences)")
    ax.set_ylabel("count")
    ax.set_title(f"Hessian spectrum: {land['positive_ratio']:.1%} positive")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)

