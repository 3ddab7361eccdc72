"""Driver for a lent GPU machine (not a project command): what `vistream train deblur
--ablation-out ... --export ... --ablation-export ...` does, for a lockstep S3E / ablation pair,
called through `models.deblur.s3e` directly because the lent image lacks some of the CLI's
imports (pydantic, kafka-python, faiss). Writes into OUT_DIR the two exported weight files
with their manifests and the training histories (`histories.json`, for `plot_training`), the
files a device call can bring back; the checkpoints stay in OUT_DIR/run.

    python docs/probes/deblur_device_train.py OUT_DIR --generator 32,64,4,96,4 \
        --init models/deblur/weights/s3e-large.safetensors \
        --ablation-init models/deblur/weights/ablation-large.safetensors \
        --batch 256 --lr 5e-4 --seed 5 --workers 14 --seconds 380
"""

import argparse
import json
from pathlib import Path

import torch

from vistream.models.deblur.s3e import export_weights
from vistream.models.deblur.train import DeblurTrainConfig, generator_sizes, model_from_checkpoint, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--generator", default="32,64,4,96,4")
    p.add_argument("--init", default="")
    p.add_argument("--ablation-init", default="")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--seconds", type=float, default=380.0, help="time budget; the cosine is fitted to it")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tag", default="gpu", help="model id prefix of the exports")
    a = p.parse_args()

    if a.device.startswith("cuda"):
        # convolutions of a fixed size: let cuDNN pick its fastest kernels; TF32 for matmuls
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = DeblurTrainConfig(steps=100_000, batch=a.batch, lr=a.lr, seed=a.seed, device=a.device,
                            workers=a.workers, checkpoint_every=250, **generator_sizes(a.generator),
                            init=a.init, ablation_init=a.ablation_init)
    run = {"s3e": a.out / "run" / "s3e", "ablation": a.out / "run" / "ablation"}
    res = train(cfg, run["s3e"], resume=False, progress=False, max_seconds=a.seconds,
                ablation_dir=run["ablation"], fit_schedule=True)
    histories = {"s3e": res["history"], "ablation": res["ablation"]["history"]}
    (a.out / "histories.json").write_text(json.dumps(histories))
    for name, folder in run.items():
        model = model_from_checkpoint(folder / "checkpoint.pt", semantic=name == "s3e")
        init = a.init if name == "s3e" else a.ablation_init
        export_weights(model, a.out / f"{name}.safetensors",
                       extra={"model_id": f"{name}-{a.tag}-{res['step']}steps-b{a.batch}-seed{a.seed}",
                              "train": {"steps": res["step"], "batch": a.batch, "lr": a.lr, "seed": a.seed,
                                        "device": a.device, "generator": a.generator, "init": init,
                                        "augment": cfg.augment, "photos": cfg.photos}})
    print(json.dumps({"step": res["step"], "steps": res["steps"], "seconds": res["seconds"],
                      "last": res["history"][-1], "ablation_last": res["ablation"]["history"][-1]}))


if __name__ == "__main__":
    main()
