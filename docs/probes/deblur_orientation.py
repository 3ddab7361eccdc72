"""One-off probe behind docs/deblur.md, "Memorised photos" (not a project command): severe
PSNR of an S3E / ablation pair on the held-out severe scenes as they are, and with the sharp
scene mirrored, turned upside down or transposed before it is blurred (same kernel, same
noise level). A generator that learned the eight training photos by heart loses PSNR on the
turned scenes; Richardson-Lucy with the true kernel is the reference that cannot remember.
Run from the repository root:
``python docs/probes/deblur_orientation.py [S3E_WEIGHTS ABLATION_WEIGHTS]``."""

import sys

import numpy as np
import torch

from vistream.models.data.blur import convolve, eval_set
from vistream.models.deblur.evaluate import psnr, richardson_lucy, run_model
from vistream.models.deblur.s3e import load_weights

TURNS = {
    "as is": lambda a: a,
    "mirrored": lambda a: a[:, ::-1],
    "upside down": lambda a: a[::-1],
    "transposed": lambda a: a.transpose(1, 0, 2),
}


def main(s3e_path: str, ablation_path: str, n: int = 100) -> None:
    torch.set_num_threads(1)
    nets = {"s3e": load_weights(s3e_path)[0].eval(), "ablation": load_weights(ablation_path)[0].eval()}
    samples = eval_set("severe", n)
    for name, turn in TURNS.items():
        sharp = [np.ascontiguousarray(turn(s.sharp)) for s in samples]
        blurred = []
        for i, (s, x) in enumerate(zip(samples, sharp)):
            noise = np.random.default_rng(i).normal(0, s.sigma, x.shape).astype(np.float32)
            blurred.append(np.clip(convolve(x, s.kernel) + noise, 0, 1))
        row = {"input": np.mean([psnr(a, b) for a, b in zip(sharp, blurred)]),
               "rl_true_kernel": np.mean([psnr(a, richardson_lucy(b, s.kernel, 10))
                                          for a, b, s in zip(sharp, blurred, samples)])}
        for key, net in nets.items():
            out, _ = run_model(net, blurred)
            row[key] = np.mean([psnr(a, o) for a, o in zip(sharp, out)])
        cells = "  ".join(f"{k} {v:.3f}" for k, v in row.items())
        print(f"{name:12s} {cells}  semantic {row['s3e'] - row['ablation']:+.3f}", flush=True)


if __name__ == "__main__":
    paths = sys.argv[1:3] or ["models/deblur/weights/s3e-large.safetensors",
                              "models/deblur/weights/ablation-large.safetensors"]
    main(*paths)
