"""``vistream train decouple`` and ``vistream eval decouple``: interpretable network decoupling
(controlling modules gate a trained ResNet's filters per input), see docs/decoupling.md."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import eval_app, train_app


def _load_backbone(path: Path):
    # deferred: loads torch; --help stays instant
    from vistream.models.artifacts import load_artifact
    from vistream.models.train import load_checkpoint_model

    if not path.is_file():
        raise typer.BadParameter(f"{path} not found (train one with `vistream train backbone`)",
                                 param_hint="--base")
    try:
        return load_checkpoint_model(path) if path.suffix == ".pt" else load_artifact(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise typer.BadParameter(f"cannot load a backbone from {path}: {str(exc).splitlines()[0]}",
                                 param_hint="--base") from None


@train_app.command("decouple")
def train_decouple(
    base: Path = typer.Option(..., "--base", help="trained CIFAR ResNet: a `train backbone` checkpoint "
                              "(.pt) or an artifact (.vsa)"),
    dataset: str = typer.Option("digits", "--dataset", help="digits, digits-composite, "
                                "imagefolder:PATH or cifar10:PATH (the base's dataset)"),
    epochs: int = typer.Option(6, min=1),
    lr: float = typer.Option(0.01, help="SGD learning rate"),
    schedule: str = typer.Option("step", help="step (x0.1 at 50% and 75% of the epochs, as the paper) "
                                 "| cosine | constant"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lambda_k: float = typer.Option(1.0, "--lambda-k", min=0.0, help="weight of the KL alignment"),
    lambda_m: float = typer.Option(0.01, "--lambda-m", min=0.0, help="weight of the mask classifier"),
    lambda_s: float = typer.Option(1.5e-4, "--lambda-s", min=0.0, help="weight of the sparsity term "
                                   "(paper, CIFAR ResNet-56 over 200 epochs: 1.5e-4; short runs need more)"),
    target: float = typer.Option(0.6, min=0.01, max=1.0, help="share of filters meant to stay active"),
    ramp: float = typer.Option(0.0, min=0.0, max=1.0, help="share of the gated epochs over which the "
                               "sparsity target falls linearly from 1 to --target (0: all at once)"),
    ctrl_lr_mult: float = typer.Option(1.0, "--ctrl-lr-mult", min=0.0, help="lr of the controlling "
                                       "modules and mask classifiers as a multiple of --lr"),
    ctrl_adam: bool = typer.Option(False, "--ctrl-adam", help="Adam instead of SGD for the controlling "
                                   "modules and mask classifiers (their gradients are tiny at open gates)"),
    lambda_d: float = typer.Option(0.0, "--lambda-d", min=0.0, help="weight of distillation from "
                                   "the dense base's logits (KL at temperature 4)"),
    settle_epochs: int = typer.Option(0, "--settle-epochs", min=0, help="last epochs with hard "
                                      "gates and frozen controllers (CE + distillation only)"),
    sparsity_gates: str = typer.Option("noisy", "--sparsity-gates", help="gates the sparsity term "
                                       "counts: noisy (the training gates, as the paper) or "
                                       "inference (1[g > 0], straight-through)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("out/train/decouple"), "--out", help="checkpoint folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune a trained ResNet with controlling modules (SemHash gates in training, hard gates
    at inference) on CE + KL + mask-classifier + sparsity; checkpoint every epoch (--resume);
    prints the summary JSON (validation accuracy and active filter share of the kept epoch)."""
    # deferred: loads torch; --help stays instant
    import copy

    from vistream.models.data import load_dataset
    from vistream.models.decoupling.decouple import DecoupledResNet
    from vistream.models.decoupling.finetune import DecoupleConfig, finetune

    if sparsity_gates not in ("noisy", "inference"):
        raise typer.BadParameter(f"{sparsity_gates!r}: use noisy or inference",
                                 param_hint="--sparsity-gates")
    if schedule not in ("step", "cosine", "constant"):
        raise typer.BadParameter(f"{schedule!r}: use step, cosine or constant", param_hint="--schedule")
    data = load_dataset(dataset)
    backbone = _load_backbone(base)
    if settle_epochs >= epochs:
        raise typer.BadParameter(f"{settle_epochs} settle epochs leave none of {epochs} to learn "
                                 "the gates", param_hint="--settle-epochs")
    teacher = copy.deepcopy(backbone).eval() if lambda_d else None
    try:
        model = DecoupledResNet(backbone)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--base") from None
    if model.fc.out_features != data.num_classes:
        raise typer.BadParameter(f"{base} has {model.fc.out_features} classes, {dataset} has "
                                 f"{data.num_classes}", param_hint="--base")
    cfg = DecoupleConfig(epochs=epochs, lr=lr, schedule=schedule, batch_size=batch_size, seed=seed,
                         threads=threads,
                         lambda_k=lambda_k, lambda_m=lambda_m, lambda_s=lambda_s, target=target,
                         ramp=ramp, ctrl_lr_mult=ctrl_lr_mult, ctrl_adam=ctrl_adam, lambda_d=lambda_d,
                         settle_epochs=settle_epochs, sparsity_gates=sparsity_gates)
    summary = finetune(model, data, cfg, out, resume=resume, progress=progress, log=typer.echo,
                       teacher=teacher)
    summary["base"] = str(base)
    typer.echo(json.dumps(summary))


@eval_app.command("decouple")
def eval_decouple(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="`train decouple` checkpoint (best.pt)"),
    base: Path = typer.Option(..., "--base", help="the dense net it was fine-tuned from (.pt or .vsa)"),
    dataset: str = typer.Option("digits", "--dataset", help="the dataset both were trained on"),
    attacks: str = typer.Option("fgsm,pgd", "--attacks", help="comma separated: fgsm, pgd; "
                                "empty to skip adversarial detection"),
    eps: float = typer.Option(8 / 255, min=0.0, max=1.0, help="L-inf attack budget in pixel units"),
    pgd_steps: int = typer.Option(10, "--pgd-steps", min=1),
    adv_n: int = typer.Option(300, "--adv-n", min=10, help="test images attacked"),
    latency_images: int = typer.Option(32, "--latency-images", min=1,
                                       help="test images timed one at a time (batch 1)"),
    latency_rounds: int = typer.Option(15, "--latency-rounds", min=1),
    threads: int = typer.Option(1, min=1, help="torch CPU threads (latency is measured with these)"),
    out: Path = typer.Option(Path("out/eval/decouple"), "--out", help="results.json and paths.png"),
    artifact: Path | None = typer.Option(None, "--artifact", help="also export the decoupled net "
                                         "as an artifact (.vsa, runtime 'decoupled') for the "
                                         "features stage, with these figures in its manifest"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Test accuracy (base vs decoupled), FLOPs skipped (per input, from its gates), the per-class
    paths picture (layers x filters), batch-1 CPU latency with inactive filters really skipped vs
    the dense base, and FGSM/PGD detection from the paths (AUROC). Last line: results JSON."""
    # deferred: loads torch; --help stays instant
    import torch

    from vistream.models.data import load_dataset
    from vistream.models.decoupling.evaluate import run_evaluation

    names = [a.strip() for a in attacks.split(",") if a.strip()]
    bad = [a for a in names if a not in ("fgsm", "pgd")]
    if bad:
        raise typer.BadParameter(f"unknown attack(s) {bad}: use fgsm, pgd", param_hint="--attacks")
    if not checkpoint.is_file():
        raise typer.BadParameter(f"{checkpoint} not found (run `vistream train decouple`)",
                                 param_hint="--checkpoint")
    torch.set_num_threads(threads)
    data = load_dataset(dataset)
    dense = _load_backbone(base)
    try:
        res = run_evaluation(checkpoint, dense, data, out, names, eps=eps, adv_n=adv_n,
                             pgd_steps=pgd_steps, latency_images=latency_images,
                             latency_rounds=latency_rounds, threads=threads, progress=progress)
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--checkpoint") from None
    if artifact is not None:
        from vistream.models.decoupling.evaluate import load_decoupled  # defer: torch (--help)
        from vistream.models.decoupling.runtime import export_decoupled_artifact  # defer: torch

        metrics = {"test_acc": res["accuracy"]["decoupled"], "base_test_acc": res["accuracy"]["base"],
                   "flops_skipped": res["flops"]["skipped"],
                   "mean_flops_per_image": res["flops"]["mean_per_image"], "dataset": data.name}
        manifest = export_decoupled_artifact(load_decoupled(checkpoint)[0], artifact, data=data,
                                             metrics=metrics)
        res["artifact"] = {"path": str(artifact), "model_id": manifest["model_id"]}
    typer.echo(json.dumps(res))
