"""Binarized architecture search (BNAS): ``vistream search bnas``, ``vistream train bnas`` and
``vistream eval bnas``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import app, eval_app, train_app

search_app = typer.Typer(help="Architecture search (BNAS: binarized DARTS cells, PC-DARTS partial "
                              "channels, performance-based operation space reduction).",
                         no_args_is_help=True)
app.add_typer(search_app, name="search")


def _data(dataset: str):
    # deferred: loads numpy and the seeded data; --help stays instant
    from vistream.models.data import load_dataset

    try:
        return load_dataset(dataset)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--dataset") from None


def _genotype(path: Path):
    # deferred: loads torch; --help stays instant
    from vistream.models.nas.genotype import GenotypeError, load_genotype

    try:
        return load_genotype(path)
    except GenotypeError as e:
        raise typer.BadParameter(str(e), param_hint="--genotype") from None


@search_app.command("bnas")
def search_bnas(
    dataset: str = typer.Option("digits-composite", "--dataset", help="digits, digits-composite, ..."),
    out: Path = typer.Option(Path("out/nas/search-s0"), "--out", help="search folder: state.pt, "
                             "rounds.jsonl, remaining.png, genotype.json, search.json"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/state.pt (same options)"),
    ucb: bool = typer.Option(False, "--ucb", help="UCB variant: sample and drop by upper confidence bound"),
    reduce: bool = typer.Option(True, "--reduce/--no-reduce", help="--no-reduce: plain PC-DARTS for "
                                "the same epochs (the cost baseline)"),
    seed: int = typer.Option(0, "--seed"),
    channels: int = typer.Option(8, "--channels", min=4, help="initial cell width C (multiple of --k)"),
    layers: int = typer.Option(3, "--layers", min=1, help="cells (reductions at 1/3 and 2/3)"),
    k: int = typer.Option(4, "--k", min=1, help="PC-DARTS: 1/k of the channels go through the mixed op"),
    size: int = typer.Option(16, "--size", min=8, help="search images resized to SIZE x SIZE"),
    train_images: int = typer.Option(512, "--train-images", min=32, help="weight-training images"),
    val_images: int = typer.Option(256, "--val-images", min=32, help="architecture-step and "
                                   "sampled-net validation images"),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    warmup: int = typer.Option(2, "--warmup", min=0, help="epochs before the first reduction round"),
    round_epochs: int = typer.Option(1, "--round-epochs", min=1, help="epochs between rounds"),
    passes: int = typer.Option(2, "--passes", min=1, help="sampling passes per round"),
    eval_batches: int = typer.Option(2, "--eval-batches", min=1, help="validation batches per sampled net"),
    lr: float = typer.Option(3e-3, "--lr"),
    arch_lr: float = typer.Option(3e-3, "--arch-lr"),
    threads: int = typer.Option(1, "--threads", min=1),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Search a 1-bit cell pair: warm-up epochs, then one reduction round per --round-epochs
    until each edge keeps one operation (7 rounds). Logs every epoch and round to
    OUT/rounds.jsonl (and stdout), draws OUT/remaining.png, writes OUT/genotype.json; the last
    line is the summary JSON (epochs, FLOP-weighted cost, seconds, genotype)."""
    if channels % k:
        raise typer.BadParameter(f"--channels {channels} must be a multiple of --k {k}")
    data = _data(dataset)
    # deferred: loads torch; --help stays instant
    from vistream.models.nas.bnas import SearchConfig, run_search

    cfg = SearchConfig(C=channels, layers=layers, k=k, size=size, train_images=train_images,
                       search_val_images=val_images, batch_size=batch_size, warmup=warmup,
                       round_epochs=round_epochs, lr=lr, arch_lr=arch_lr, passes=passes,
                       eval_batches=eval_batches, ucb=ucb, reduce=reduce, seed=seed, threads=threads)
    try:
        summary = run_search(data, cfg, out, resume=resume, progress=progress, echo=typer.echo)
    except ValueError as e:  # an existing search without --resume, or other settings with it
        raise typer.BadParameter(str(e), param_hint="--out/--resume") from None
    typer.echo(f"genotype: {out / 'genotype.json'}")
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}))


@train_app.command("bnas")
def train_bnas(
    genotype: Path = typer.Option(..., "--genotype", help="genotype.json (or a search folder)"),
    dataset: str = typer.Option("digits-composite", "--dataset"),
    export: Path | None = typer.Option(None, "--export", help="write a packed-runtime artifact (.vsa)"),
    channels: int = typer.Option(0, "--channels", min=0, help="initial width C; 0: the largest whose "
                                 "binary ops are <= XNOR ResNet-20's at --base"),
    layers: int = typer.Option(5, "--layers", min=1, help="cells"),
    base: int = typer.Option(8, "--base", min=4, help="the XNOR ResNet-20 width the bit-ops "
                                                      "budget is taken from"),
    epochs: int = typer.Option(5, "--epochs", min=1),
    train_subset: int = typer.Option(0, "--train-subset", min=0, help="train on N images (0: all)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(1e-2, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", min=1),
    out: Path | None = typer.Option(None, "--out", help="checkpoint folder (default out/nas/train/...)"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a searched genotype into a 1-bit network (the 1-bit training loop: Adam, cosine,
    checkpoints, best validation epoch) and optionally export it; prints the summary JSON."""
    g = _genotype(genotype)
    data = _data(dataset)
    # deferred: loads torch; --help stays instant
    from vistream.models.binary.evaluate import binary_cost
    from vistream.models.binary.train import BinaryTrainConfig, create_method
    from vistream.models.nas.train import fit_width, train_genotype

    if channels == 0:
        budget = binary_cost(create_method("xnor").build(data.num_classes, 3, base, 20), data.input_size)
        channels = fit_width(g, layers, budget["binary_ops"], data.input_size)
    cfg = BinaryTrainConfig(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, threads=threads,
                            train_subset=train_subset or None)
    out = out or Path("out/nas/train") / f"bnas-C{channels}-L{layers}-{data.name}-s{seed}"
    summary = train_genotype(g, data, cfg, channels, layers, out, resume=resume, progress=progress,
                             export=export)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "genotype"}))


@eval_app.command("bnas")
def eval_bnas(
    search: Path = typer.Option(Path("out/nas/search-s0"), "--search", help="folder of the search "
                                "with space reduction (genotype.json, search.json)"),
    baseline_search: Path | None = typer.Option(None, "--baseline-search", help="folder of the same "
                                                "search run with --no-reduce (cost baseline, its "
                                                "genotype as a row)"),
    dataset: str = typer.Option("digits-composite", "--dataset"),
    handmade: str = typer.Option("bonn", "--handmade", help="the best of cbcn/bonn/rbcn/gbcn on the "
                                 "set (bonn by docs/binary.md's composite table)"),
    seeds: int = typer.Option(1, "--seeds", min=1),
    epochs: int = typer.Option(5, "--epochs", min=1),
    train_subset: int = typer.Option(1024, "--train-subset", min=0, help="train on N images (0: all)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    layers: int = typer.Option(5, "--layers", min=1, help="cells of the searched nets"),
    base: int = typer.Option(8, "--base", min=4, help="width of the hand-made ResNet-20s"),
    threads: int = typer.Option(1, "--threads", min=1),
    out: Path = typer.Option(Path("out/nas/eval"), "--out", help="run cache"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the result here"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train XNOR ResNet-20, the best hand-made 1-bit ResNet and the searched net(s) at <= XNOR's
    bit-operations with the same loop and budget; print a table, the search costs with and
    without reduction, and a last-line JSON."""
    if handmade not in ("cbcn", "bonn", "rbcn", "gbcn"):
        raise typer.BadParameter("--handmade must be cbcn, bonn, rbcn or gbcn", param_hint="--handmade")
    data = _data(dataset)
    # deferred: loads torch; --help stays instant
    from vistream.models.binary.train import BinaryTrainConfig
    from vistream.models.nas.evaluate import evaluate_bnas, format_table
    from vistream.models.nas.genotype import GenotypeError

    cfg = BinaryTrainConfig(epochs=epochs, base=base, batch_size=batch_size, threads=threads,
                            train_subset=train_subset or None)
    try:
        result = evaluate_bnas(data, search, cfg, seeds, out, baseline_search, handmade, layers,
                               progress=progress, echo=typer.echo)
    except GenotypeError as e:
        raise typer.BadParameter(str(e), param_hint="--search") from None
    typer.echo(format_table(result))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps(result))
