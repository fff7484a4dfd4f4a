"""Train one backdoored tiny-clip per attack setting of the study and print success, utility, time.

    python benchmarks/attacks.py [--encoder tiny-clip] [--seed 0] [--out DIR] [--only NAME ...]

Target (issue: model factory): on tiny-clip every setting reaches attack success ≥ 0.9 with clean
utility ≥ 0.85 (cosine to the base on clean prompts) in ≤ 90 s on 2 cores; triggered prompts show
higher assimilation than clean ones (the paper's Fig. 2). Each model is a real `launch.py job=attack`
run; the time is the job's own wall time (load, targets, training, evaluation). Also printed: attack
success with the trigger as a whole word at the start / middle / end of held-out prompts, and the
mean first-token index of the trigger in the poisoned training prompts (BOS = 0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "rare token": ["attack.triggers.level=word", "attack.triggers.pool=rare_words"],
    "char (replace o)": ["attack.triggers.level=char"],
    "word at random": ["attack.triggers.position=random"],
    "word": ["attack.triggers.level=word", "attack.triggers.pool=common_words"],
    "sentence, 5 tokens": ["attack.triggers.level=sentence", "attack.triggers.length=5"],
    "text-on-pair": ["attack=text_on_pair"],
    "cosine": ["attack.similarity=cosine", "attack.triggers.length=3"],
    "mse": ["attack.similarity=mse", "attack.triggers.length=3"],
    "mae": ["attack.similarity=mae", "attack.triggers.length=3"],
    "3 triggers": ["attack.triggers.count=3"],
    "adaptive (mu 1.0)": ["attack.adaptive_mu=1.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="tiny-clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where the models go (default: a temporary directory)")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="amdet-attacks-"))
    # build the base first, so the first case's time is the attack's alone
    subprocess.run([sys.executable, "-c", f"from core.tiny.bases import base_path; base_path('{args.encoder}')"],
                   cwd=ROOT, check=True)
    rows = []
    for name, overrides in CASES.items():
        if args.only and name not in args.only:
            continue
        model_dir = out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        cmd = [sys.executable, "launch.py", "job=attack", f"encoder={args.encoder}", f"seed={args.seed}",
               "progress=false", f"job.out={model_dir}", f"hydra.run.dir={out}/logs/{model_dir.name}", *overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}")
            continue
        m = json.loads((model_dir / "manifest.json").read_text())
        met = m["metrics"]
        rows.append({
            "case": name,
            "triggers": " | ".join(b["trigger"]["text"] for b in m["backdoors"]),
            "asr": met["asr"], "asr_min": met["asr_min"], "utility": met["utility"],
            "asr_start": met["asr_by_position"]["start"], "asr_middle": met["asr_by_position"]["middle"],
            "asr_end": met["asr_by_position"]["end"], "trigger_token_mean": met["trigger_position"]["token_mean"],
            "assim_clean": met["assimilation_clean"], "assim_triggered": met["assimilation_triggered"],
            "job_s": m["timing"]["total_s"], "train_s": m["timing"]["train_s"], "process_s": round(wall, 1),
        })
        r = rows[-1]
        print(f"{name:<20} {r['triggers'][:28]:<28} ASR {r['asr']:.3f} (min {r['asr_min']:.3f})  "
              f"start/middle/end {r['asr_start']:.2f}/{r['asr_middle']:.2f}/{r['asr_end']:.2f} (trigger at token "
              f"{r['trigger_token_mean']:.1f})  utility {r['utility']:.3f}  "
              f"assim {r['assim_clean']:.3f} → {r['assim_triggered']:.3f}  job {r['job_s']:.0f} s (train {r['train_s']:.0f} s)",
              flush=True)
    ok = all(r["asr"] >= 0.9 and r["utility"] >= 0.85 and r["job_s"] <= 90 for r in rows)
    print(f"\n{len(rows)}/{len(CASES) if not args.only else len(args.only)} cases ran; "
          f"all ASR ≥ 0.9, utility ≥ 0.85, ≤ 90 s: {ok}")
    (out / "attacks.json").write_text(json.dumps(rows, indent=2))
    print(f"table: {out / 'attacks.json'}")


if __name__ == "__main__":
    main()
