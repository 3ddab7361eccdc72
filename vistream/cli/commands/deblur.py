"""``vistream train deblur``, ``vistream eval deblur`` and ``vistream bench deblur``:
S3E-Deblur (caption-guided deblurring), see docs/deblur.md."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from vistream.cli.main import bench_app, eval_app, train_app
from vistream.models.deblur import SHIPPED_WEIGHTS


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
    import torch

    from vistream.models.deblur.s3e import (
        TrainConfig,
        export_weights,
        generator_sizes,
        model_from_checkpoint,
        plot_training,
        train,
    )

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
    from vistream.models.data.blur import TRAINING_POOLS

    if photos not in TRAINING_POOLS:
        raise typer.BadParameter(f"{photos!r}: choose from {', '.join(TRAINING_POOLS)}",
                                 param_hint="--photos")
    if fit_schedule and max_minutes is None:
        raise typer.BadParameter("needs --max-minutes", param_hint="--fit-schedule")
    try:
        sizes = generator_sizes(generator)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--generator") from None
    dirs = [out] + ([ablation_out] if ablation_out is not None else [])
    for d in dirs:
        if not resume and (d / "checkpoint.pt").exists():
            typer.echo(f"starting afresh: {d / 'checkpoint.pt'} is replaced (use --resume to continue it)")
            (d / "checkpoint.pt").unlink()
    cfg = TrainConfig(steps=steps, batch=batch, size=size, lr=lr, seed=seed, semantic=semantic,
                      threads=threads, device=device, workers=workers, **sizes, paint_half=paint_half,
                      grounding=grounding, augment=augment, photos=photos,
                      init=str(init or "") if semantic else "",
                      ablation_init=str(ablation_init or "") if semantic else str(init or ""))
    try:
        res = train(cfg, out, resume=resume, progress=progress,
                    max_seconds=None if max_minutes is None else 60 * max_minutes, log=typer.echo,
                    ablation_dir=ablation_out, fit_schedule=fit_schedule)
    except ValueError as exc:  # a checkpoint or start that does not fit these settings
        hint = "--init" if "start" in str(exc) else "--resume"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    summary = {"out": str(out), "semantic": semantic, "step": res["step"], "steps": res["steps"],
               "seconds": res["seconds"], "last": res["history"][-1] if res["history"] else None}
    targets = [(out, semantic, export)]
    if ablation_out is not None:
        summary["ablation"] = {"out": str(ablation_out), "last": (res["ablation"]["history"] or [None])[-1]}
        targets.append((ablation_out, False, ablation_export))
    for folder, sem, path in targets:
        if path is None:
            continue
        model = model_from_checkpoint(folder / "checkpoint.pt", semantic=sem)
        name = "s3e" if sem else "ablation"
        export_weights(model, path, extra={"model_id": f"{name}-{res['step']}steps-seed{seed}",
                                           "train": {"steps": res["step"], "batch": batch, "size": size,
                                                     "lr": lr, "seed": seed, "device": device,
                                                     "generator": [v for v in sizes.values() if v],
                                                     "grounding": grounding,
                                                     "augment": augment, "photos": photos,
                                                     "init": str((init if folder == out else ablation_init)
                                                                 or "")}})
        summary.setdefault("exports", []).append(str(path))
    histories = {"s3e" if semantic else "ablation": res["history"]}
    if ablation_out is not None:
        histories["ablation"] = res["ablation"]["history"]
    summary["plot"] = str(plot_training(histories, out / "losses.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(json.dumps(summary))


train_app.command("deblur")(train_deblur)


def _load(path: Path | None, which: str, semantic: bool):
    from vistream.models.deblur.s3e import load_weights, model_from_checkpoint

    p = path or SHIPPED_WEIGHTS[which]
    if not p.exists():
        raise typer.BadParameter(f"weights file {p} not found (train with `vistream train deblur "
                                 f"--export`)", param_hint=f"--{which}")
    if p.suffix == ".pt":
        return model_from_checkpoint(p, semantic=semantic)
    model, _ = load_weights(p)
    model.cfg.semantic = semantic
    return model


def _quality_targets(methods: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The issue's quality targets read from one severe set's table of methods."""
    s3e = methods["s3e"]
    gain = s3e["psnr"] - methods["blurred"]["psnr"]
    semantic_gain = s3e["psnr"] - methods["ablation_no_semantic"]["psnr"]
    return {
        "severe_gain_over_input_db": round(gain, 3),
        "gain_3db_met": gain >= 3.0,
        "above_rl_and_wiener": s3e["psnr"] > max(methods["wiener_true_kernel"]["psnr"],
                                                 methods["richardson_lucy_true_kernel"]["psnr"]),
        "semantic_gain_db": round(semantic_gain, 3),
        "semantic_gain_0.3db_met": semantic_gain >= 0.3,
        "semantic_gain_in_object_regions_db": round(
            s3e["psnr_objects"] - methods["ablation_no_semantic"]["psnr_objects"], 3),
    }


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
    import torch

    from vistream.models.data.blur import EVAL_SETS
    from vistream.models.deblur.evaluate import evaluate_pairs, evaluate_synthetic, save_grid

    torch.set_num_threads(threads)
    if pairs is not None and not pairs.is_dir():
        raise typer.BadParameter(f"{pairs} is not a folder", param_hint="--pairs")
    levels = [v.strip() for v in sets.split(",") if v.strip()]
    unknown = [v for v in levels if v not in EVAL_SETS]
    if unknown or "severe" not in levels:
        raise typer.BadParameter(f"{', '.join(unknown) or 'severe is missing'}: the sets are "
                                 f"{', '.join(EVAL_SETS)}, and the targets need severe", param_hint="--sets")
    models = {"ablation_no_semantic": _load(ablation, "ablation", False), "s3e": _load(s3e, "s3e", True)}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if pairs is not None:
        try:
            report = {"pairs": evaluate_pairs(models, pairs, max_side, limit=20 if quick else None,
                                              mirror=mirror_ensemble)}
        except (FileNotFoundError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--pairs") from None
    else:
        report, examples = evaluate_synthetic(models, n=20 if quick else n, levels=levels, progress=progress,
                                              mirror=mirror_ensemble)
        report["grid"] = str(save_grid(examples, out / "examples.png"))
        report["targets"] = _quality_targets(report["severe"]["methods"])
        if "semantic_gain_per_scene" in report["severe"]:
            report["targets"]["semantic_gain_se_db"] = report["severe"]["semantic_gain_per_scene"]["se_db"]
        if "tree_content" in report["severe"]:
            report["targets"]["tree_content_gain_db"] = report["severe"]["tree_content"]["gain_db"]
        if "severe-unseen" in report:  # the same targets where the photos cannot be remembered
            report["targets"]["unseen_photos"] = _quality_targets(report["severe-unseen"]["methods"])
        for level in levels:
            typer.echo(f"\n{level} ({report[level]['n']} held-out scenes, classical params "
                       f"{report[level]['classical_params']})")
            for name, m in report[level]["methods"].items():
                typer.echo(f"  {name:30s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  "
                           f"object regions PSNR {m['psnr_objects']:6.2f} dB")
            typer.echo(f"  BLEU-4: {report[level]['bleu4']}")
            if "attention_on_objects" in report[level]:
                typer.echo(f"  object nodes' attention: {report[level]['attention_on_objects']}")
            if "semantic_gain_per_scene" in report[level]:
                g = report[level]["semantic_gain_per_scene"]
                ahead = 100 * g["share_of_scenes_ahead"]
                typer.echo(f"  S3E - ablation, scene by scene: {g['mean_db']:+.3f} dB, standard error "
                           f"{g['se_db']:.3f}, S3E ahead on {ahead:.0f}% of scenes")
            if "tree_content" in report[level]:
                typer.echo(f"  S3E under other scenes' trees: {report[level]['tree_content']}")
    report["seconds"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    typer.echo(f"\nwrote {out / 'results.json'}")
    typer.echo(json.dumps({"eval": "deblur", **({"targets": report["targets"]} if "targets" in report
                                                 else {"pairs": report["pairs"]["methods"]})}))


def _bench_frames(n: int, width: int, height: int, seed: int):
    import numpy as np

    from vistream.models.data.blur import make_sample
    from vistream.pipeline.envelope import JPEG, Frame

    frames, kernels = [], []
    for i in range(n):
        s = make_sample(seed + i, "severe", width, height)
        img = (s.blurred[..., ::-1] * 255).round().astype(np.uint8)
        frames.append(Frame.from_image(img, "bench", i, timestamp_ms=i, content_type=JPEG, quality=90))
        kernels.append(s.kernel)
    return frames, kernels


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
    import numpy as np
    import torch

    from vistream.models.deblur.evaluate import wiener
    from vistream.pipeline.envelope import Frame, encode_image
    from vistream.stages.deblur import DeblurParams, DeblurStage

    torch.set_num_threads(threads)
    if weights is not None and not weights.exists():
        raise typer.BadParameter(f"{weights} not found", param_hint="--weights")
    fr, kernels = _bench_frames(frames, width, height, 77_000 + seed)

    def fresh():
        return [Frame(f.frame_id, f.stream_id, f.seq, f.timestamp_ms, f.data, f.content_type) for f in fr]

    def run_stage(semantic: bool, gate: bool = True) -> tuple[float, dict]:
        # gate=False: threshold +inf, every frame is deblurred (the worst case)
        st = DeblurStage(DeblurParams(weights=str(weights) if weights else None, width=width,
                                      height=height, batch_size=batch, semantic=semantic,
                                      threads=threads, mirror_ensemble=mirror_ensemble,
                                      threshold=DeblurParams().threshold if gate else 1e9))
        st.setup()
        st.process(fresh()[:batch])  # warm-up
        st.passed = st.deblurred = 0
        msgs = fresh()
        t0 = time.perf_counter()
        for i in range(0, len(msgs), batch):
            st.process(msgs[i:i + batch])
        return len(msgs) / (time.perf_counter() - t0), st.stats()

    def run_wiener() -> float:
        msgs = fresh()[: max(8, len(fr) // 4)]
        t0 = time.perf_counter()
        for m, k in zip(msgs, kernels):
            img = m.image[..., ::-1].astype(np.float32) / 255
            encode_image((wiener(img, k, 0.5)[..., ::-1] * 255).astype(np.uint8))
        return len(msgs) / (time.perf_counter() - t0)

    s3e_fps, s3e_stats = run_stage(True)
    all_fps, _ = run_stage(True, gate=False)
    plain_fps, _ = run_stage(False, gate=False)
    w_fps = run_wiener()
    typer.echo(f"S3E stage {s3e_fps:6.1f} fps  ({s3e_stats['deblurred']} of {frames} frames deblurred, "
               f"model {s3e_stats['model']})")
    typer.echo(f"S3E stage with every frame deblurred {all_fps:6.1f} fps; unguided generator stage "
               f"(every frame) {plain_fps:6.1f} fps; "
               f"skimage Wiener (true kernel) {w_fps:6.1f} fps")
    typer.echo(json.dumps({"bench": "deblur", "size": f"{width}x{height}", "threads": threads,
                           "batch": batch, "frames": frames, "mirror_ensemble": mirror_ensemble,
                           "deblurred": s3e_stats["deblurred"],
                           "fps": round(s3e_fps, 2), "fps_every_frame_deblurred": round(all_fps, 2),
                           "target_fps": 15, "target_met": min(s3e_fps, all_fps) >= 15,
                           "baseline_unguided_generator_fps": round(plain_fps, 2),
                           "baseline_skimage_wiener_fps": round(w_fps, 2)}))
