"""One-off probe behind docs/deblur.md, "Fine-tuned on a lent H200" (not a project command):
is the captioner's mistakes what keeps the semantic gain small? Severe PSNR of S3E guided by
the tree of its greedy caption (blind, as the stage and `eval deblur` run it) against S3E
guided by the tree of the *true* caption (teacher-forced on the blurred input, as in
training: an oracle no deployment has), beside the ablation. Run from the repository root:
``python docs/probes/deblur_oracle_caption.py [S3E_WEIGHTS ABLATION_WEIGHTS]``."""

import sys

import numpy as np
import torch

from vistream.models.deblur import SHIPPED_WEIGHTS
from vistream.models.data.blur import eval_set
from vistream.models.deblur.evaluate import psnr
from vistream.models.deblur.s3e import load_weights


def main(s3e_path: str, ablation_path: str, n: int = 100, batch: int = 20) -> None:
    torch.set_num_threads(1)
    s3e, ablation = load_weights(s3e_path)[0].eval(), load_weights(ablation_path)[0].eval()
    for name in ("severe", "severe-unseen"):
        samples = eval_set(name, n)
        scores: dict[str, list[float]] = {"greedy caption": [], "true caption": [], "ablation": []}
        for i in range(0, n, batch):
            part = samples[i:i + batch]
            x = torch.from_numpy(np.stack([s.blurred for s in part]).transpose(0, 3, 1, 2)).float()
            tokens = torch.from_numpy(np.stack([s.tokens for s in part])).long()
            with torch.no_grad():
                outs = {"greedy caption": s3e.deblur(x)[0], "true caption": s3e(x, tokens)[0].clamp(0, 1),
                        "ablation": ablation.deblur(x, caption=False)[0]}
            for key, out in outs.items():
                scores[key] += [psnr(s.sharp, o.numpy().transpose(1, 2, 0)) for s, o in zip(part, out)]
        print(f"{name:14s}", "  ".join(f"{k} {np.mean(v):.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    paths = sys.argv[1:3] if len(sys.argv) >= 3 else (SHIPPED_WEIGHTS["s3e"], SHIPPED_WEIGHTS["ablation"])
    main(*paths)
