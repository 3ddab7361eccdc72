"""Shipped backbones: ``vistream artifacts build``, ``vistream artifacts list`` and
``vistream artifacts compare-binary`` (``make artifacts`` runs the build)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import app
from vistream.models.zoo import ZOO_DIR, load_index, verify  # light: json and pathlib only

artifacts_app = typer.Typer(help="The backbones shipped inside the package (models/zoo/): list "
                                 "them, rebuild them from fixed seeds.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.command("list")
def list_cmd(
    folder: Path = typer.Option(None, "--dir", help="a folder built by `artifacts build --out` "
                                "(default: the shipped models/zoo)"),
    as_json: bool = typer.Option(False, "--json", help="print the catalogue as JSON"),
) -> None:
    """The shipped artifacts with their figures: accuracy on the hard set (validation / test),
    float FLOPs (2 x MACs) and binary ops (XNOR/popcount MACs) per 32x32 image, params, bytes,
    sha256; `zoo:NAME` names one wherever an artifact path is accepted."""
    folder = folder or ZOO_DIR
    index = load_index(folder)
    if as_json:
        typer.echo(json.dumps(index, indent=1))
        return
    entries = index["artifacts"]
    if not entries:
        typer.echo(f"no artifacts in {folder} (build them with `make artifacts`)")
        raise typer.Exit(1)
    typer.echo(f"{'name':<30} {'method':<12} {'val %':>6} {'test %':>6} {'MFLOPs':>7} "
               f"{'bin MOPs':>8} {'params':>8} {'bytes':>9}  sha256")
    for name, e in sorted(entries.items()):
        bops = e.get("binary_ops") or 0
        flops = e["flops"] - 2 * bops  # float part; binary MACs are counted apart
        typer.echo(f"{'zoo:' + name:<30} {e['method']:<12} {100 * e['val_acc']:6.2f} "
                   f"{100 * e['test_acc']:6.2f} {flops / 1e6:7.2f} {bops / 1e6:8.2f} "
                   f"{e['params']:8d} {e['bytes']:9d}  {e['file_sha256'][:16]}")
    problems = verify(folder)
    total = sum(e["bytes"] for e in entries.values())
    typer.echo(f"total {total} bytes; " + ("every file matches the index" if not problems
                                           else "PROBLEMS: " + "; ".join(problems)))
    if problems:
        raise typer.Exit(1)


@artifacts_app.command("build")
def build_cmd(
    out: Path = typer.Option(None, "--out", help="where the .vsa files and index.json go "
                             "(default: the package's models/zoo)"),
    only: list[str] = typer.Option(None, "--only", help="build only this one (repeatable)"),
    work: Path = typer.Option(Path("out/artifacts"), "--work",
                              help="checkpoints; an interrupted build resumes from them"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (the shipped files "
                                "were built with 1: float sums may round differently with more)"),
    quick: bool = typer.Option(False, "--quick", help="smoke run: 1 epoch per step on 256 "
                               "images, tiny search (for tests; never ships)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Rebuild the shipped backbones from fixed seeds: the ABC-pruned float ResNet-20 and the
    1-bit ResNet-20, both trained on the hard digits-composite set. Progress bars; resumes from
    the checkpoints in --work. Prints the catalogue as JSON at the end."""
    # deferred: loads torch and the training code; --help stays instant
    from vistream.models.zoo.build import RECIPES, build

    if only:
        bad = [n for n in only if n not in RECIPES]
        if bad:
            raise typer.BadParameter(f"unknown artifact {bad[0]!r}; known: {', '.join(RECIPES)}",
                                     param_hint="--only")
    if quick and out is None:
        raise typer.BadParameter("--quick needs --out (a smoke build never replaces the shipped "
                                 "files)", param_hint="--out")
    out = out or ZOO_DIR
    index = build(list(only) if only else None, out, work / ("quick" if quick else "full"), threads,
                  progress, smoke=quick, echo=typer.echo)
    typer.echo(json.dumps(index))


@artifacts_app.command("compare-binary")
def compare_binary_cmd(
    methods: str = typer.Option("xnor,bonn,rbcn,gbcn,cbcn-abl", "--methods",
                                help="comma list of 1-bit methods (NAME-abl: its ablation)"),
    epochs: int = typer.Option(None, "--epochs", min=1, help="hard-set epochs (default: the "
                               "shipped recipe's)"),
    pretrain_epochs: int = typer.Option(None, "--pretrain-epochs", min=0),
    train_copies: int = typer.Option(None, "--train-copies", min=1),
    teacher_epochs: int = typer.Option(None, "--teacher-epochs", min=1,
                                       help="epochs of the float teacher (RBCN, GBCN)"),
    work: Path = typer.Option(Path("out/artifacts/compare"), "--work"),
    threads: int = typer.Option(2, "--threads", min=1),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Pick the shipped 1-bit method: every method trained with the shipped binary recipe (same
    data, epochs, seed), scored on the validation split only."""
    # deferred: loads torch and the training code; --help stays instant
    from dataclasses import replace

    from vistream.models.binary.train import ABLATION_FLAGS
    from vistream.models.zoo.build import RECIPES, compare_binary

    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m.removesuffix("-abl") not in ABLATION_FLAGS]
    if bad or not names:
        raise typer.BadParameter(f"methods must be among {', '.join(ABLATION_FLAGS)} (or NAME-abl), "
                                 f"got {methods!r}", param_hint="--methods")
    r = RECIPES["binary-resnet20-composite"]
    changes = {k: v for k, v in {"epochs": epochs, "pretrain_epochs": pretrain_epochs,
                                 "train_copies": train_copies,
                                 "teacher_epochs": teacher_epochs}.items() if v is not None}
    r = replace(r, **changes)
    tag = f"c{r.train_copies}-p{r.pretrain_epochs}-e{r.epochs}-b{r.base}-t{r.teacher_epochs}"
    rows = compare_binary(names, r, work / tag, threads, progress, echo=typer.echo)
    result = {"recipe": {k: getattr(r, k) for k in ("base", "train_copies", "pretrain_epochs",
                                                    "epochs", "lr", "batch_size", "seed",
                                                    "teacher_epochs")},
              "rows": sorted(rows, key=lambda x: -x["val_acc"])}
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps(result))
