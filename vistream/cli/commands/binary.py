"""1-bit network commands: ``vistream train binary`` and ``vistream eval binary``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import typer

from vistream.cli.main import eval_app, train_app

METHOD_NAMES = ("xnor", "cbcn", "bonn", "rbcn", "gbcn")


def _depth(arch: str) -> int:
    m = re.fullmatch(r"resnet(\d+)", arch)
    if not m or (int(m.group(1)) - 2) % 6:
        raise typer.BadParameter(f"--arch must be a CIFAR ResNet resnetN with N = 6n+2 (resnet20, "
                                 f"resnet32, resnet56), got {arch!r}")
    return int(m.group(1))


def _exporter():
    """The packed runtime's exporter (models/binary/packed.py), imported only when asked for."""
    try:
        # deferred: loads torch and the packed kernel; --help stays instant
        from vistream.models.binary.packed import export_binary_artifact
    except (ImportError, AttributeError) as e:
        typer.echo(f"error: --export needs models.binary.packed.export_binary_artifact (the bit-packed "
                   f"runtime), which is not available: {e}", err=True)
        raise typer.Exit(2) from e
    return export_binary_artifact


@train_app.command("binary")
def train_binary_cmd(
    method: str = typer.Option(..., "--method", help="xnor, cbcn, bonn, rbcn or gbcn"),
    arch: str = typer.Option("resnet20", "--arch", help="CIFAR ResNet layout (resnet20, resnet56)"),
    dataset: str = typer.Option("digits", "--dataset", help="digits or digits-composite"),
    epochs: int = typer.Option(8, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    base: int = typer.Option(8, "--base", min=4, help="stage widths base, 2*base, 4*base"),
    lr: float = typer.Option(1e-2, "--lr"),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam or sgd"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    init: str = typer.Option("scratch", "--init", help="scratch; float: start from the float twin; or "
                             "a float artifact/checkpoint (e.g. from `vistream import`): the 1-bit "
                             "net takes its architecture and width (resnet18/20/56)"),
    teacher: Path | None = typer.Option(None, "--teacher", help="rbcn/gbcn: float teacher artifact "
                                        "(default: --init's file when it is one, else the float "
                                        "twin trained on the dataset)"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads"),
    out: Path = typer.Option(None, "--out", help="checkpoint folder (default out/binary/runs/...)"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    no_circulant: bool = typer.Option(False, "--no-circulant", help="cbcn: plain filters, no centre loss"),
    no_bayes: bool = typer.Option(False, "--no-bayes", help="bonn: no Bayesian kernel/feature losses"),
    no_gan: bool = typer.Option(False, "--no-gan", help="rbcn: no discriminators / adversarial loss"),
    no_bga: bool = typer.Option(False, "--no-bga", help="gbcn: no balanced genetic algorithm"),
    export: Path | None = typer.Option(None, "--export", help="write a bit-packed runtime artifact"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train one 1-bit network (progress bars, checkpoint every epoch, --resume); prints the
    validation/test top-1 as JSON. The RBCN/GBCN teacher (float twin) is trained once and cached."""
    if method not in METHOD_NAMES:
        raise typer.BadParameter(f"unknown method {method!r}: choose one of {', '.join(METHOD_NAMES)}",
                                 param_hint="--method")
    if optimizer not in ("adam", "sgd"):
        raise typer.BadParameter("--optimizer must be adam or sgd", param_hint="--optimizer")
    layout = "cifar"
    if init not in ("scratch", "float"):
        # deferred: loads torch; --help stays instant
        from vistream.models.importer import ImportRefused, binary_layout

        try:
            start = binary_layout(init)
        except ImportRefused as e:
            raise typer.BadParameter(str(e), param_hint="--init") from None
        arch, base, layout = start["arch"], start["base"], start["layout"]
    depth = int(arch.removeprefix("resnet")) if layout == "imagenet" else _depth(arch)
    if teacher is not None and method not in ("rbcn", "gbcn"):
        raise typer.BadParameter(f"{method} has no teacher (rbcn and gbcn have)", param_hint="--teacher")
    teacher_model = None
    if method in ("rbcn", "gbcn") and (teacher is not None or init not in ("scratch", "float")):
        # deferred: loads torch; --help stays instant
        from vistream.models.importer import ImportRefused, binary_teacher

        try:
            teacher_model = binary_teacher(teacher or init, depth, layout, base)
        except ImportRefused as e:
            raise typer.BadParameter(str(e), param_hint="--teacher") from None
    flags = {"circulant": no_circulant, "bayes": no_bayes, "gan": no_gan, "bga": no_bga}
    # deferred: loads torch; --help stays instant
    from vistream.models.binary.train import ABLATION_FLAGS

    for flag, on in flags.items():
        if on and ABLATION_FLAGS[method] != flag:
            raise typer.BadParameter(f"--no-{flag} does not apply to {method}"
                                     + (f" (its ablation flag is --no-{ABLATION_FLAGS[method]})"
                                        if ABLATION_FLAGS[method] else ""))
    if init != "scratch" and method == "cbcn" and not no_circulant:
        raise typer.BadParameter("cbcn's K-channel feature maps have no float twin: --init float "
                                 "applies to its ablation (--no-circulant) only", param_hint="--init")
    exporter = _exporter() if export else None
    # deferred: loads torch; --help stays instant
    from vistream.models.binary.train import BinaryTrainConfig, train_and_export
    from vistream.models.data import load_dataset

    data = load_dataset(dataset)
    cfg = BinaryTrainConfig(epochs=epochs, seed=seed, base=base, depth=depth, lr=lr,
                            optimizer=optimizer, batch_size=batch_size, threads=threads, init=init,
                            layout=layout)
    summary = train_and_export(method, data, cfg, arch, out, ablate=any(flags.values()),
                               resume=resume, progress=progress, export=export, exporter=exporter,
                               teacher=teacher_model)
    typer.echo(json.dumps(summary))


def _seeds(text: str, names: list[str]) -> dict[str, int]:
    try:
        if "=" not in text:
            n = int(text)
            out = {d: n for d in names}
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            out = {d.strip(): int(v) for d, v in pairs}
            if set(out) != set(names):
                raise ValueError
    except ValueError as e:
        raise typer.BadParameter(f"--seeds must be N or DATASET=N for each dataset, got {text!r}",
                                 param_hint="--seeds") from e
    if min(out.values()) < 1:
        raise typer.BadParameter("--seeds must be >= 1", param_hint="--seeds")
    return out


@eval_app.command("binary")
def eval_binary(
    dataset: str = typer.Option("digits", "--dataset",
                                 help="comma list: digits, digits-composite"),
    seeds: str = typer.Option("3", "--seeds", help="seeds for rows within a point of another: N, or "
                              "per dataset, e.g. digits=3,digits-composite=1"),
    epochs: int = typer.Option(8, "--epochs", min=1, help="training epochs of every binary row"),
    base: int = typer.Option(8, "--base", min=4),
    arch: str = typer.Option("resnet20", "--arch"),
    quick: bool = typer.Option(False, "--quick", help="smoke run: 1 epoch on 256 images, 1 seed"),
    out: Path = typer.Option(Path("out/binary/eval"), "--out", help="run cache (resumable)"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the figures here"),
    docs: Path | None = typer.Option(None, "--docs", help="table file (default docs/binary.md; "
                                     "not written by --quick unless given)"),
    jobs: int = typer.Option(1, "--jobs", min=1,
                             help="worker processes (single runs in parallel, 1 thread each)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """FP and XNOR rows, CBCN / BONN / RBCN / GBCN and one ablation row each: top-1 on the test
    split (mean ± sd over seeds where two rows are within a point), binary ops, float FLOPs,
    weight memory. Prints one table, then the JSON figures as the last line."""
    # deferred: loads torch; --help stays instant
    from vistream.models.binary.evaluate import run_evaluation
    from vistream.models.binary.train import BinaryTrainConfig

    depth = _depth(arch)
    names = [d.strip() for d in dataset.split(",") if d.strip()]
    known = ("digits", "digits-composite")
    if not names or any(n not in known for n in names):
        raise typer.BadParameter(f"datasets must be among {', '.join(known)}, got {dataset!r}",
                                 param_hint="--dataset")
    per = _seeds(seeds, names)
    cfg = BinaryTrainConfig(epochs=epochs, base=base, depth=depth, out_root=str(out))
    if quick:
        cfg.epochs, cfg.float_epochs, cfg.train_subset = 1, 3, 256
        per = {n: 1 for n in names}
        out = out / "quick"
        cfg.out_root = str(out)
    command = "vistream eval binary " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["eval", "binary"] \
        else "vistream eval binary"
    docs = docs or (None if quick else Path("docs/binary.md"))
    result = run_evaluation(names, cfg, per, out, command, docs, json_path, jobs=jobs,
                            progress=progress, echo=typer.echo)
    typer.echo(json.dumps(result))
