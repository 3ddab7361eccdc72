"""Backbone commands: ``vistream train backbone``, ``vistream export``, ``vistream compress abc``,
``vistream eval pruning`` and ``vistream bench backbone``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import app, bench_app, eval_app, train_app

compress_app = typer.Typer(help="Compress trained backbones (channel pruning).", no_args_is_help=True)
app.add_typer(compress_app, name="compress")

DATASET = typer.Option("digits", "--dataset", help="digits, digits-composite, imagefolder:PATH "
                                                   "or cifar10:PATH")


@train_app.command("backbone")
def train_backbone(
    arch: str = typer.Option("resnet20", "--arch", help="registered backbone name"),
    dataset: str = DATASET,
    epochs: int = typer.Option(30, min=1),
    lr: float = typer.Option(0.1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    schedule: str = typer.Option("cosine", help="cosine | step | constant"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("out/backbones/run"), "--out", help="checkpoint folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    device: str = typer.Option("cpu"),
    export: Path | None = typer.Option(None, "--export", help="also write an artifact here"),
    init: Path | None = typer.Option(None, "--init", help="start from these weights (a checkpoint "
                                     "or artifact of the same architecture, e.g. trained on "
                                     "another dataset) instead of a random initialisation"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a backbone (SGD momentum, cosine/step LR, checkpoint every epoch, --resume);
    prints val/test accuracy and, with --export, writes an artifact of the best epoch.
    --init transfers trained weights (fresh optimiser and schedule)."""
    # deferred: loads torch; --help stays instant
    from vistream.models.backbones import create_model
    from vistream.models.data import load_dataset
    from vistream.models.pruning import load_base
    from vistream.models.train import BackboneTrainConfig, train_and_export

    data = load_dataset(dataset)
    model = create_model(arch, num_classes=data.num_classes)
    if init is not None:
        try:
            model.load_state_dict(load_base(init).state_dict())
        except (FileNotFoundError, RuntimeError) as exc:  # RuntimeError: other shapes or layers
            raise typer.BadParameter(f"cannot start {arch} ({data.num_classes} classes) from {init}: "
                                     f"{str(exc).splitlines()[0]}", param_hint="--init") from None
    cfg = BackboneTrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule, seed=seed,
                              threads=threads, device=device)
    summary = train_and_export(model, arch, data, cfg, out, resume=resume, progress=progress,
                               export=export, init=init)
    typer.echo(json.dumps(summary))


# ----------------------------------------------------------------------------- export
@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="training checkpoint (.pt) or artifact (.vsa)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact file to write"),
    dataset: str = DATASET,
    method: str = typer.Option("baseline", help="method recorded in the manifest"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="also embed an ONNX graph"),
    evaluate_test: bool = typer.Option(True, "--eval/--no-eval",
                                       help="measure val/test accuracy into the manifest"),
) -> None:
    """Write one artifact file: JSON manifest (arch, channel config, method, input spec,
    normalisation, FLOPs, params, metrics, sha256) + safetensors weights (+ ONNX)."""
    # deferred: loads torch; --help stays instant
    from vistream.models.artifacts import export_artifact, read_artifact
    from vistream.models.data import load_dataset
    from vistream.models.pruning import load_base
    from vistream.models.train import evaluate

    model = load_base(checkpoint)
    data = load_dataset(dataset)
    metrics = {}
    if checkpoint.suffix == ".vsa":
        man, _, _ = read_artifact(checkpoint)
        metrics = dict(man.get("metrics", {}))
        method = man.get("method", method) if method == "baseline" else method
    if evaluate_test:
        metrics.update(val_acc=evaluate(model, data.val, data.mean, data.std),
                       test_acc=evaluate(model, data.test, data.mean, data.std))
    man = export_artifact(model, out, method=method, data=data, metrics=metrics, onnx=onnx)
    typer.echo(json.dumps({"artifact": str(out), "model_id": man["model_id"], "arch": man["arch"],
                           "flops": man["flops"], "params": man["params"], "metrics": metrics,
                           "onnx_bytes": man["onnx"]["bytes"], "sha256": man["sha256"]}))


# ----------------------------------------------------------------------------- compress
def _abc_config(food: int, cycles: int, limit: int, fitness_epochs: int, fitness_subset: int | None,
                fitness_lr: float, seed: int, target: float | None, fitness_metric: str = "accuracy",
                **options: str):
    # deferred: loads torch; --help stays instant
    from vistream.models.pruning.abc import ABCConfig

    try:
        return ABCConfig(food_number=food, max_cycle=cycles, limit=limit,
                         fitness_epochs=fitness_epochs, fitness_subset=fitness_subset,
                         fitness_lr=fitness_lr, seed=seed, flops_target=target,
                         fitness_metric=fitness_metric, **options)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


FOOD = typer.Option(6, "--food", min=2, help="food sources (paper: 10)")
CYCLES = typer.Option(3, "--cycles", min=1, help="ABC cycles (paper: 10)")
LIMIT = typer.Option(3, "--limit", min=1, help="failed trials before a scout (paper: 5)")
FIT_EPOCHS = typer.Option(1, "--fitness-epochs", min=1, help="fitness training epochs (paper: 2)")
FIT_SUBSET = typer.Option(None, "--fitness-subset", help="train fitness on N images (default all)")
FIT_LR = typer.Option(0.01, "--fitness-lr")
FIT_METRIC = typer.Option("accuracy", "--fitness-metric",
                          help="accuracy: validation accuracy (paper); loss: 1/(1 + validation "
                          "cross-entropy), which still ranks candidates when the validation "
                          "accuracy is saturated")
MOVE_RULE = typer.Option("round_step", "--move-rule",
                         help="round_step: round the moved gene, step +-1 when unchanged (default, "
                         "the docs' figures); truncate: int(x + U(-1,1)(x - x_k)) as the official "
                         "code")
FT_FROM = typer.Option("repruned", "--finetune-from",
                       help="repruned: fine-tune the best structure pruned again from the base "
                       "(default, the docs' figures); best_candidate: from the best candidate's "
                       "fitness-trained weights, as the official code")
REPAIR = typer.Option("count", "--budget-repair",
                      help="a bee move the FLOPs repair turns back into its parent: count "
                      "(default, the docs' figures: a failed trial), resample (draw the move "
                      "again), skip (no evaluation, no failed trial)")
MULTIPLE = typer.Option(8, "--channel-multiple", min=1,
                        help="align every pruned width to this many channels (CPU kernels work in "
                        "8-channel SIMD groups: off-grid widths save FLOPs but not time); 1 = "
                        "unaligned, as in the papers")


@compress_app.command("abc")
def compress_abc(
    arch: str = typer.Option(None, "--arch", help="backbone (must match --base; default: --base's "
                             "architecture, else resnet56)"),
    base: Path = typer.Option(None, "--base", help="trained checkpoint/artifact, e.g. one written by "
                              "`vistream import` (default out/backbones/ARCH-DATASET/best.pt)"),
    dataset: str = DATASET,
    flops_target: float = typer.Option(0.5, "--flops-target", min=0.01, max=1.0,
                                       help="fraction of the original FLOPs to keep"),
    food: int = FOOD, cycles: int = CYCLES, limit: int = LIMIT, fitness_epochs: int = FIT_EPOCHS,
    fitness_subset: int | None = FIT_SUBSET, fitness_lr: float = FIT_LR,
    fitness_metric: str = FIT_METRIC,
    move_rule: str = MOVE_RULE, finetune_from: str = FT_FROM, budget_repair: str = REPAIR,
    finetune_epochs: int = typer.Option(10, "--finetune-epochs", min=0),
    finetune_lr: float = typer.Option(0.01, "--finetune-lr"),
    seed: int = typer.Option(0),
    channel_multiple: int = MULTIPLE,
    out: Path = typer.Option(None, "--out", help="work folder (default out/pruning/abc-ARCH)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted search/fine-tune"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """ABCPruner: bee-colony search of per-layer widths at a FLOPs budget (weights inherited,
    fitness = val accuracy after a short training), then fine-tune the best structure and
    export it. Logs every structure (evaluations.jsonl) and draws convergence.png."""
    # deferred: loads torch; --help stays instant
    import torch

    from vistream.models.data import load_dataset
    from vistream.models.pruning import compress_abc as run, load_base

    from vistream.models.importer import prunable_base

    cfg = _abc_config(food, cycles, limit, fitness_epochs, fitness_subset, fitness_lr, seed,
                      flops_target, fitness_metric, move_rule=move_rule,
                      finetune_from=finetune_from, budget_repair=budget_repair)
    torch.set_num_threads(1)
    data = load_dataset(dataset)
    base = base or Path(f"out/backbones/{arch or 'resnet56'}-{dataset}/best.pt")
    model = load_base(base)
    arch = arch or model.config["arch"]
    out = out or Path(f"out/pruning/abc-{arch}-{dataset}")
    if model.config["arch"] != arch:
        raise ValueError(f"--base is a {model.config['arch']}, not {arch}")
    model = prunable_base(model, data.num_classes, seed, echo=typer.echo)  # e.g. an imported model
    result = run(model, data, flops_target, cfg, seed, finetune_epochs, finetune_lr, out,
                 progress=progress, resume=resume, channel_multiple=channel_multiple,
                 echo=typer.echo)
    typer.echo(json.dumps(result))


# ----------------------------------------------------------------------------- eval
@eval_app.command("pruning")
def eval_pruning(
    arch: str = typer.Option("resnet20", "--arch"),
    base: Path = typer.Option(None, "--base", help="trained checkpoint/artifact "
                              "(default out/backbones/ARCH-DATASET/best.pt)"),
    dataset: str = DATASET,
    flops_target: float = typer.Option(0.5, "--flops-target", min=0.01, max=1.0),
    methods: str = typer.Option("abc,uniform,l1,random", help="comma-separated"),
    seeds: str = typer.Option("0", help="comma-separated seeds, e.g. 0,1,2"),
    finetune_epochs: int = typer.Option(5, "--finetune-epochs", min=0),
    finetune_lr: float = typer.Option(0.01, "--finetune-lr"),
    food: int = FOOD, cycles: int = CYCLES, limit: int = LIMIT, fitness_epochs: int = FIT_EPOCHS,
    fitness_subset: int | None = FIT_SUBSET, fitness_lr: float = FIT_LR,
    fitness_metric: str = FIT_METRIC,
    move_rule: str = MOVE_RULE, finetune_from: str = FT_FROM, budget_repair: str = REPAIR,
    latency_batch: int = typer.Option(32, "--latency-batch"),
    channel_multiple: int = MULTIPLE,
    deploy: bool = typer.Option(True, "--deploy/--plain", help="time the deployed models (BN folded "
                                "into convs, channels-last memory, as the features stage runs them) "
                                "or the plain eval-mode modules"),
    out: Path = typer.Option(None, "--out", help="default out/pruning/eval-ARCH-DATASET"),
    jobs: int = typer.Option(1, "--jobs", min=1, help="run the (method, seed) pairs in this many "
                             "worker processes, one torch thread each"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """ABCPruner vs uniform / L1-norm / random structures at the same FLOPs: one table of
    test accuracy (mean ± sd over seeds), FLOPs, params, measured CPU latency, speedup and
    search cost in epochs, for each method and the unpruned model. Last line: JSON."""
    # deferred: loads torch; --help stays instant
    import torch

    from vistream.models.data import load_dataset
    from vistream.models.pruning import evaluate_pruning, format_table, load_base

    cfg = _abc_config(food, cycles, limit, fitness_epochs, fitness_subset, fitness_lr, 0,
                      flops_target, fitness_metric, move_rule=move_rule,
                      finetune_from=finetune_from, budget_repair=budget_repair)
    torch.set_num_threads(1)
    data = load_dataset(dataset)
    base = base or Path(f"out/backbones/{arch}-{dataset}/best.pt")
    out = out or Path(f"out/pruning/eval-{arch}-{dataset}")
    model = load_base(base)
    result = evaluate_pruning(model, data, flops_target, [m.strip() for m in methods.split(",")],
                              tuple(int(s) for s in seeds.split(",")), finetune_epochs,
                              finetune_lr, cfg, out, progress=progress,
                              latency_batch=latency_batch, echo=typer.echo,
                              channel_multiple=channel_multiple, deploy=deploy, jobs=jobs)
    typer.echo(format_table(result))
    typer.echo(json.dumps(result))


# ----------------------------------------------------------------------------- bench
@bench_app.command("backbone")
def bench_backbone(
    artifacts: list[Path] | None = typer.Argument(None, help="pruned artifacts (.vsa) to measure"),
    reference: str | None = typer.Option(None, "--reference", help="unpruned artifact/checkpoint "
                                         "(default: the registered arch at full width)"),
    arch: str | None = typer.Option(None, "--arch", help="instead of artifacts: a synthetic pruned "
                                    "ARCH (random weights, unaligned random widths at --flops-target)"),
    flops_target: float = typer.Option(0.5, "--flops-target", min=0.05, max=1.0,
                                       help="FLOPs ratio of the synthetic pruned net"),
    seed: int = typer.Option(1, "--seed", help="seed of the synthetic widths"),
    batch: list[int] = typer.Option([1, 32], "--batch", min=1, help="batch sizes (repeat the option)"),
    threads: int = typer.Option(1, "--threads", min=1),
    reps: int = typer.Option(7, "--reps", min=2, help="interleaved rounds per batch size"),
    deploy: bool = typer.Option(True, "--deploy/--plain",
                                help="time every model deployed (BN folded into convs, channels-last "
                                "memory: what the features stage runs) or as plain eval-mode modules "
                                "(NCHW convs are slow at the odd channel counts pruning leaves)"),
    pad: bool = typer.Option(True, "--pad/--no-pad", help="deployed pruned nets pad their inner widths "
                             "to the multiple (1, 8, 16) that measures fastest here"),
    clock: str = typer.Option("wall", "--clock", help="headline clock: wall, or cpu (this thread's CPU "
                              "time; steadier on a machine shared with other busy processes)"),
    deploy_out: Path | None = typer.Option(None, "--deploy-out", help="also write each artifact with "
                                           "its measured deploy record in the manifest to this folder"),
) -> None:
    """CPU latency of pruned nets vs the unpruned model at batch 1 and 32, measured interleaved
    in the same run and the same form; each row has speedup, target_speedup (0.8 / FLOPs ratio)
    and the padding its deployed form chose; the last line carries the worst
    speedup / (1 / FLOPs ratio) (target: >= 0.8). Give artifacts or --arch."""
    # deferred: loads torch; --help stays instant
    from vistream.bench.backbone import bench_backbone as run

    artifacts = artifacts or []
    if not artifacts and not arch:
        raise typer.BadParameter("give pruned artifacts or --arch for a synthetic pruned net")
    if clock not in ("wall", "cpu"):
        raise typer.BadParameter("wall or cpu", param_hint="--clock")
    for a in [*artifacts, *([Path(reference)] if reference else [])]:
        if not a.exists():
            raise typer.BadParameter(f"{a} does not exist")
    result = run(artifacts, reference=reference, batches=batch, threads=threads, reps=reps,
                 deploy=deploy, pad=pad, clock=clock, arch=arch, flops_target=flops_target, seed=seed,
                 deploy_out=deploy_out, echo=typer.echo)
    typer.echo(json.dumps(result))
