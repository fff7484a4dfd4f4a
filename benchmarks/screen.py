"""Does the cut vocabulary screen (`scan.inversion.screen_keep`) take the exhaustive screen's candidates?

    python benchmarks/screen.py MODEL_DIR [MODEL_DIR ...] [--keep 4096] [--prompts 1000]

For each stored model (a directory with manifest.json naming its base, as attacks and benign runs
write them), on the scan's own shallow set (`scan.prompts` defender prompts, `scan.seed`): scores
every vocabulary token on each of the screen's prompts alone (stage 1's loss: cut to
`screen_positions`, anchor term off), takes the exhaustive screen's candidates (the best
`screen_candidates` of the prompts' mean) and prints the worst rank any of them has on each prompt
alone, whether the cut screen (every token on the first prompt, its best --keep on the others) takes
the same candidates, and both screens' times. About 45 s a tiny-clip model at one thread (the
exhaustive screen runs twice: per prompt for the ranks, and whole for its start).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from amdet.inversion import LossWeights, screen_losses, shallow_set, token_rows, vocabulary_start  # noqa: E402
from amdet.job import shallow_prompts  # noqa: E402
from core.loading import load_encoder  # noqa: E402


def ranks_of(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The rank (0 = best) of each of `ids` among all `scores`."""
    rank = torch.empty_like(scores, dtype=torch.long)
    rank[scores.argsort()] = torch.arange(len(scores))
    return rank[ids]


def measure(model_dir: Path, prompts: list[str], inv, keep: int, seed: int) -> dict:
    base = json.loads((model_dir / "manifest.json").read_text())["base"]
    model, anchor = load_encoder(str(model_dir), "cpu"), load_encoder(base, "cpu")
    data = shallow_set(model, prompts, inv.test_share, seed)
    rows, idx, cut = token_rows(model), data.train[: inv.screen_prompts], inv.screen_positions
    screen = LossWeights(anchor=0.0)
    t = time.perf_counter()
    alone = [screen_losses(model, anchor, data.hidden[i : i + 1, :cut], data.output[i : i + 1, :cut], rows, screen)
             for i in idx.tolist()]
    exhaustive_s = time.perf_counter() - t
    candidates = torch.stack(alone).mean(0).argsort()[: inv.screen_candidates]
    args = (model, anchor, data, inv.k, LossWeights(), inv.screen_prompts, cut, inv.screen_candidates, inv.batch_size)
    t = time.perf_counter()
    start = vocabulary_start(*args, keep=keep)
    cut_s = time.perf_counter() - t
    every = vocabulary_start(*args, keep=None)
    return {"model": str(model_dir), "worst_rank_per_prompt": [int(ranks_of(s, candidates).max()) for s in alone],
            "same_start": start.token_ids == every.token_ids, "start": start.tokens,
            "stage1_exhaustive_s": round(exhaustive_s, 1), "screen_cut_s": round(cut_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--keep", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"scan.prompts={args.prompts}", "progress=false"])
    prompts, _ = shallow_prompts(cfg)
    rows = [measure(m, prompts, cfg.scan.inversion, args.keep, cfg.scan.seed) for m in args.models]
    for row in rows:
        print(json.dumps(row), flush=True)
    worst = [max(r["worst_rank_per_prompt"][i] for r in rows) for i in range(len(rows[0]["worst_rank_per_prompt"]))]
    same = sum(r["same_start"] for r in rows)
    print(f"{len(rows)} models: the exhaustive screen's {cfg.scan.inversion.screen_candidates} candidates ranked at worst "
          f"{worst} on each prompt alone; the cut screen (keep {args.keep}) started v at the same token(s) on {same}/{len(rows)}")


if __name__ == "__main__":
    main()
