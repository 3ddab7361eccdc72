"""``vistream train deblur``, ``vistream eval deblur`` and ``vistream bench deblur``:
S3E-Deblur (caption-guided deblurring), see docs/deblur.md."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import bench_app, eval_app, train_app


def train_deblur(
    out: Path = typer.Option(Path("out/train/deblur/s3e"), "--out", help="checkpoint folder"),
    steps: int = typer.Option(1300, min=1, help="optimisation steps (batches)"),
    batch: int = typer.Option(8, min=1, help="scenes per batch"),
    size: int = typer.Option(96, min=32, help="training scene size (px, square)"),
    lr: float = typer.Option(1e-3, min=0.0, help="generator/captioner learning rate (cosine decay)"),
    seed: int = typer.Option(0),
    semantic: bool = typer.Option(True, "--semantic/--no-semantic",
                                  help="--no-semantic trains the ablation (zero tree embedding)"),
    ablation_out: Path | None = typer.Option(
        None, "--ablation-out", help="also train the ablation, in lockstep (same initial weights, "
        "batches and schedule), checkpointed in this folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(0, min=0, help="data-loader processes making the seeded scenes"),
    max_minutes: float | None = typer.Option(None, min=0.1, help="stop (checkpointed) after this long"),
    fit_schedule: bool = typer.Option(False, "--fit-schedule", help="with --max-minutes: measure the "
                                      "speed, then shorten --steps so the schedule ends in time"),
    export: Path | None = typer.Option(None, "--export", help="write generator+captioner weights "
                                       "(safetensors + JSON manifest) here for the deblur stage"),
    ablation_export: Path | None = typer.Option(None, "--ablation-export",
                                                help="with --ablation-out: the ablation's weights file"),
    generator: str = typer.Option("32,48,3", "--generator", help="generator size C1,C2,BLOCKS: "
                                  "channels at 1/2 and 1/4 resolution, residual blocks at 1/4; "
                                  "append ,C3,BLOCKS8 for a 1/8 level with its own blocks "
                                  "(shipped: 32,64,4,96,4 = large, the stage's default; 32,64,4 = medium; "
                                  "32,48,3 = small)"),
    init: Path | None = typer.Option(None, "--init", help="start from these exported weights "
                                     "(fine-tuning: fresh optimiser and schedule; same --generator)"),
    ablation_init: Path | None = typer.Option(None, "--ablation-init",
                                              help="with --ablation-out: the ablation's starting weights"),
    paint_half: bool = typer.Option(False, "--paint-half", help="also paint the tree's object "
                                    "nodes into the generator's 1/2-resolution features (zero at "
                                    "the start, so --init weights without it run unchanged)"),
    grounding: float = typer.Option(0.0, min=0.0, help="weight of the grounding loss: each object "
                                    "node's attention map against the grid cells its object covers"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="turn each photo crop by a "
                                 "random flip / transposition and tint grey photos (without it the "
                                 "generator learns the bundled photos by heart; the shipped weights "
                                 "before the eighth session were trained without)"),
    photos: str = typer.Option("wide", "--photos", help="training photos: wide (the eight colour "
                               "photos of the held-out sets and eleven more bundled images, "
                               "textures among them) or bundled (the eight only)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Co-train captioner, S3-tree and generator (WGAN-GP critic) on seeded scenes;
    checkpoint every 200 steps, --resume continues, --export writes the stage's weights file.
    --ablation-out trains the no-semantic ablation beside it on the very same batches."""
    # deferred: loads torch; --help stays instant
    import torch

    from vistream.models.data.blur import TRAINING_POOLS
    from vistream.models.deblur.train import DeblurTrainConfig, generator_sizes, train_and_export

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available here (no GPU, or a CPU-only torch)",
                                 param_hint="--device")
    if ablation_out is not None and not semantic:
        raise typer.BadParameter("--ablation-out trains the ablation beside S3E; drop --no-semantic",
                                 param_hint="--ablation-out")
    if ablation_export is not None and ablation_out is None:
        raise typer.BadParameter("needs --ablation-out", param_hint="--ablation-export")
    if ablation_init is not None and ablation_out is None:
        raise typer.BadParameter("needs --ablation-out", param_hint="--ablation-init")
    for flag, p in (("--init", init), ("--ablation-init", ablation_init)):
        if p is not None and not p.is_file():
            raise typer.BadParameter(f"{p} not found", param_hint=flag)
    if photos not in TRAINING_POOLS:
        raise typer.BadParameter(f"{photos!r}: choose from {', '.join(TRAINING_POOLS)}",
                                 param_hint="--photos")
    if fit_schedule and max_minutes is None:
        raise typer.BadParameter("needs --max-minutes", param_hint="--fit-schedule")
    try:
        sizes = generator_sizes(generator)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--generator") from None
    cfg = DeblurTrainConfig(steps=steps, batch=batch, size=size, lr=lr, seed=seed, semantic=semantic,
                            threads=threads, device=device, workers=workers, **sizes, paint_half=paint_half,
                            grounding=grounding, augment=augment, photos=photos,
                            init=str(init or "") if semantic else "",
                            ablation_init=str(ablation_init or "") if semantic else str(init or ""))
    try:
        summary = train_and_export(cfg, out, resume=resume, progress=progress,
                                   max_seconds=None if max_minutes is None else 60 * max_minutes,
                                   ablation_dir=ablation_out, fit_schedule=fit_schedule, export=export,
                                   ablation_export=ablation_export, init=init,
                                   ablation_init=ablation_init, log=typer.echo)
    except ValueError as exc:  # a checkpoint or start that does not fit these settings
        hint = "--init" if "start" in str(exc) else "--resume"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    typer.echo(json.dumps(summary))


train_app.command("deblur")(train_deblur)


def _load(path: Path | None, which: str, semantic: bool):
    # deferred: loads cv2 (and torch once a model loads); --help stays instant
    from vistream.models.deblur.evaluate import load_model

    try:
        return load_model(path, which, semantic)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{which}") from None


@eval_app.command("deblur")
def eval_deblur(
    pairs: Path | None = typer.Option(None, "--pairs", help="GoPro-layout folder (blur/ + sharp/) "
                                      "instead of the seeded held-out sets"),
    quick: bool = typer.Option(False, "--quick", help="20 images per level instead of --n"),
    n: int = typer.Option(100, min=1, help="held-out images per evaluation set"),
    sets: str = typer.Option("severe,mild,severe-unseen", "--sets", help="held-out sets, comma "
                             "separated: severe, mild (the training photos, other crops) and "
                             "severe-unseen (severe blur on photos training never sees)"),
    s3e: Path | None = typer.Option(None, "--s3e", help="S3E weights (.safetensors or checkpoint .pt); "
                                    "default: the shipped large model"),
    ablation: Path | None = typer.Option(None, "--ablation", help="ablation weights (default: shipped)"),
    max_side: int = typer.Option(320, min=16, help="--pairs images are downscaled to fit this"),
    out: Path = typer.Option(Path("out/eval/deblur"), "--out", help="output folder"),
    threads: int = typer.Option(1, min=1),
    mirror_ensemble: bool = typer.Option(False, "--mirror-ensemble", help="run S3E and the ablation as "
                                         "two-view self-ensembles (frame and its mirror image, averaged): "
                                         "twice the cost"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """PSNR/SSIM of blurred input, RL and Wiener (true kernel), the ablation and S3E;
    BLEU-4 of captions on blurred vs deblurred input; a PNG grid; results.json."""
    # deferred: loads torch; --help stays instant
    import torch

    from vistream.models.data.blur import EVAL_SETS
    from vistream.models.deblur.evaluate import run_evaluation

    torch.set_num_threads(threads)
    if pairs is not None and not pairs.is_dir():
        raise typer.BadParameter(f"{pairs} is not a folder", param_hint="--pairs")
    levels = [v.strip() for v in sets.split(",") if v.strip()]
    unknown = [v for v in levels if v not in EVAL_SETS]
    if unknown or "severe" not in levels:
        raise typer.BadParameter(f"{', '.join(unknown) or 'severe is missing'}: the sets are "
                                 f"{', '.join(EVAL_SETS)}, and the targets need severe", param_hint="--sets")
    models = {"ablation_no_semantic": _load(ablation, "ablation", False), "s3e": _load(s3e, "s3e", True)}
    try:
        result = run_evaluation(models, out, pairs, n=20 if quick else n, levels=levels,
                                max_side=max_side, limit=20 if quick else None,
                                mirror=mirror_ensemble, progress=progress, echo=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        if pairs is None:
            raise
        raise typer.BadParameter(str(exc), param_hint="--pairs") from None
    typer.echo(json.dumps(result))


@bench_app.command("deblur")
def bench_deblur(
    frames: int = typer.Option(48, min=1, help="blurred frames per measurement"),
    width: int = typer.Option(320, min=16),
    height: int = typer.Option(240, min=16),
    batch: int = typer.Option(8, min=1, help="stage batch size"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    weights: Path | None = typer.Option(None, "--weights", help="S3E weights (default: shipped)"),
    mirror_ensemble: bool = typer.Option(False, "--mirror-ensemble", help="the stage's two-view "
                                         "self-ensemble (twice the generator work per frame)"),
    seed: int = typer.Option(0),
) -> None:
    """Frames/s of the deblur stage on severely blurred JPEG frames (decode, gate, S3E,
    re-encode, caption), with the unguided generator and skimage Wiener (true kernel) as
    baselines measured in the same run. JSON last line."""
    # deferred: loads torch; --help stays instant
    from vistream.bench.deblur import bench_deblur as run

    if weights is not None and not weights.exists():
        raise typer.BadParameter(f"{weights} not found", param_hint="--weights")
    result = run(frames=frames, width=width, height=height, batch=batch, threads=threads,
                 weights=weights, mirror_ensemble=mirror_ensemble, seed=seed, echo=typer.echo)
    typer.echo(json.dumps(result))
