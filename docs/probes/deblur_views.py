"""One-off probe behind docs/deblur.md, "A two-view self-ensemble" (not a project command):
severe PSNR of an S3E / ablation pair on the held-out severe scenes, single view, averaged with
the mirrored view (what ``S3EDeblur.deblur(mirror=True)`` does) and with the upside-down view
added as a third. Each view is captioned from itself. Run from the repository root:
``python docs/probes/deblur_views.py [S3E_WEIGHTS ABLATION_WEIGHTS]``."""

import sys

import numpy as np
import torch

from vistream.models.data.blur import eval_set
from vistream.models.deblur.evaluate import psnr, run_model
from vistream.models.deblur.s3e import load_weights


def turned_view(net, blurred: list[np.ndarray], turn) -> list[np.ndarray]:
    """Deblur every image turned by ``turn`` and turn the result back (each turn is its own inverse)."""
    out, _ = run_model(net, [np.ascontiguousarray(turn(b)) for b in blurred])
    return [turn(o) for o in out]


def main(s3e_path: str, ablation_path: str, n: int = 100) -> None:
    torch.set_num_threads(2)
    samples = eval_set("severe", n)
    sharp = [s.sharp for s in samples]
    blurred = [s.blurred for s in samples]
    print(f"input {np.mean([psnr(a, b) for a, b in zip(sharp, blurred)]):.3f}")
    for key, path in (("s3e", s3e_path), ("ablation", ablation_path)):
        net = load_weights(path)[0].eval()
        views = [turned_view(net, blurred, t) for t in
                 (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1])]
        row = {"single": views[0], "mirror": views[1],
               "two views": [(a + b) / 2 for a, b in zip(*views[:2])],
               "three views": [(a + b + c) / 3 for a, b, c in zip(*views)]}
        print(key, "  ".join(f"{k} {np.mean([psnr(s, o) for s, o in zip(sharp, v)]):.3f}"
                             for k, v in row.items()), flush=True)


if __name__ == "__main__":
    paths = sys.argv[1:3] or ["models/deblur/weights/s3e-large.safetensors",
                              "models/deblur/weights/ablation-large.safetensors"]
    main(*paths)
