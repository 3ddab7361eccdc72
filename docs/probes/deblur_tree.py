"""One-off probes behind docs/deblur.md, "Does the generator read the tree?" (not a project
command): severe PSNR of S3E weights under altered trees, and the ceiling of perfect object
regions. Run from the repository root: ``python docs/probes/deblur_tree.py [WEIGHTS]``."""

import sys

import numpy as np
import torch

from vistream.models.data.blur import eval_set
from vistream.models.deblur.evaluate import masked_psnr, object_region, psnr
from vistream.models.deblur.s3e import load_weights


def report(name: str, samples, images: np.ndarray) -> None:
    whole = np.mean([psnr(s.sharp, o) for s, o in zip(samples, images)])
    objects = np.mean([masked_psnr(s.sharp, o, object_region(s)) for s, o in zip(samples, images)])
    print(f"{name:28s} PSNR {whole:.3f}  object regions {objects:.3f}")


def main(path: str) -> None:
    torch.set_num_threads(1)
    model, _ = load_weights(path)
    samples = eval_set("severe", 100)
    x = torch.tensor(np.stack([s.blurred for s in samples])).permute(0, 3, 1, 2).float()
    truth = torch.tensor(np.stack([s.tokens for s in samples])).long()
    gen = model.generator
    with torch.no_grad():
        toks, states, alphas = model.captioner.greedy(x)
        obj, att, root = model._embed(states, alphas, toks)
        _, states_t, alphas_t = model.captioner(x, truth)
        zero = (torch.zeros_like(obj), torch.zeros_like(att))
        outs = {
            "greedy caption (as shipped)": gen(x, obj, att, root),
            "all-zero tree": gen(x, *zero, torch.zeros_like(root)),
            "true caption": gen(x, *model._embed(states_t, alphas_t, truth)),
            "root's batch mean only": gen(x, *zero, root.mean(0, keepdim=True).expand_as(root)),
        }
    own = outs["greedy caption (as shipped)"].clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for name, out in outs.items():
        report(name, samples, out.clamp(0, 1).permute(0, 2, 3, 1).numpy())
    masks = [object_region(s)[..., None] for s in samples]
    report("perfect object regions", samples,
           np.stack([np.where(m, s.sharp, o) for s, o, m in zip(samples, own, masks)]))
    report("half the error there", samples,
           np.stack([np.where(m, (s.sharp + o) / 2, o) for s, o, m in zip(samples, own, masks)]))
    print("object region share of pixels", round(float(np.mean([m.mean() for m in masks])), 4))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/deblur/weights/s3e-large.safetensors")
