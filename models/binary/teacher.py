"""The float teacher of the 1-bit networks: the zoo's float ResNet at the same width.

:func:`float_twin` trains it once (cached) with :func:`models.train.train`: the FP row of the
evaluation and the RBCN/GBCN teacher. :func:`init_from_float` copies it into a binary net
(``init="float"``, the Bi-Real/RBCN practice). A module of its own because both the training
loop (:mod:`models.binary.train`) and a method (:mod:`models.binary.rbcn`) need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistream.models.backbones import create_model
from vistream.models.binary.layers import binary_convs
from vistream.models.data import DataBundle
from vistream.models.train import BackboneTrainConfig, load_checkpoint_model, train


@torch.no_grad()
def init_from_float(model, teacher) -> None:
    """Copy a trained zoo CIFAR ResNet into its binary twin (Bi-Real Net's and RBCN's practice of
    starting a 1-bit network from a real-valued one): stem, every 3x3 conv and BN, the
    down-sampling 1x1 conv + BN, the classifier. Circulant layers take every K-th filter (the
    unrotated copy); learned scales and BONN's prior are re-initialised from the new weights."""
    blocks = [b for stage in model.stages for b in stage]
    if len(blocks) != len(teacher.blocks):
        raise ValueError("teacher and student have different depths")

    def copy(dst, src) -> None:
        if dst.shape == src.shape:
            dst.copy_(src)
        elif dst.shape[1:] == src.shape[1:] and src.shape[0] % dst.shape[0] == 0:
            dst.copy_(src[:: src.shape[0] // dst.shape[0]])
        else:
            raise ValueError(f"cannot copy {tuple(src.shape)} into {tuple(dst.shape)}")

    def copy_bn(dst, src) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, k).copy_(getattr(src, k))

    copy(model.stem[0].weight, teacher.stem[0].weight)
    copy_bn(model.stem[1], teacher.stem[1])
    for sb, tb in zip(blocks, teacher.blocks):
        copy(sb.unit1.conv.weight, tb.conv1.weight)
        copy_bn(sb.unit1.bn, tb.bn1)
        copy(sb.unit2.conv.weight, tb.conv2.weight)
        copy_bn(sb.unit2.bn, tb.bn2)
        if not isinstance(sb.unit1.shortcut, nn.Identity) and len(tb.shortcut):
            copy(sb.unit1.shortcut[1].weight, tb.shortcut[0].weight)
            copy_bn(sb.unit1.shortcut[2], tb.shortcut[1])
    model.fc.weight.copy_(teacher.fc.weight)
    model.fc.bias.copy_(teacher.fc.bias)
    for _, m in binary_convs(model):
        if getattr(m, "scale_mode", "") == "learned":
            m.alpha.copy_(m.weight.abs().mean(dim=(1, 2, 3)))
        if hasattr(m, "reset_prior"):
            m.reset_prior()


def float_twin(data: DataBundle, cfg: Any, seed: int = 0, progress: bool = True,
               arch: str | None = None):
    """The float ResNet of the zoo at the same width, trained with models/train.py; cached
    under ``cfg.out_root/float/`` (a finished run is loaded, an interrupted one resumed).
    ``cfg`` is the 1-bit run's :class:`~models.binary.train.BinaryTrainConfig`: its width
    (``depth``, ``base``), ``float_epochs``, ``float_lr``, ``out_root``, ``threads`` and
    ``train_subset`` are read."""

    arch = arch or f"resnet{cfg.depth}"
    epochs = cfg.float_epochs
    folder = Path(cfg.out_root) / "float" / f"{arch}-{data.name}-b{cfg.base}-e{epochs}-s{seed}"
    done = folder / "done"
    if not done.exists():
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=data.num_classes, base=cfg.base)
        fcfg = BackboneTrainConfig(epochs=epochs, lr=cfg.float_lr, batch_size=64, seed=seed,
                                   threads=cfg.threads, train_subset=cfg.train_subset)
        train(model, data, fcfg, ckpt_dir=folder, resume=True, progress=progress)
        done.write_text("ok\n")
    return load_checkpoint_model(folder / "best.pt").eval()
