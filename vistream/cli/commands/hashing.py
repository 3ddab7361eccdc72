"""``vistream eval hashing``: the online-hashing protocol (SDOH and its baselines)."""

from __future__ import annotations

from pathlib import Path

import typer

from vistream.cli.main import eval_app


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides(items: list[str]) -> dict[str, dict[str, float]]:
    """``["okh.alpha=0.5", ...]`` -> ``{"okh": {"alpha": 0.5}}`` (numbers only)."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        try:
            num = float(value)
        except ValueError:
            num = None
        if not (sep and dot and method and param) or num is None:
            raise typer.BadParameter(f"expected METHOD.PARAM=NUMBER, got {item!r}",
                                     param_hint="--set")
        out.setdefault(method.strip(), {})[param.strip()] = num
    return out


@eval_app.command("hashing")
def eval_hashing(
    data: str = typer.Option("digits-pixels,digits-cnn", "--data",
                             help="comma list of digits-pixels, digits-cnn or PATH.npz "
                                  "(arrays X (n, d) and y (n,) or (n, c))"),
    bits: str = typer.Option("16,32,64", "--bits", help="comma list of code lengths (multiples of 8)"),
    methods: str = typer.Option("sdoh,lsh,itq,okh,adapthash,hcoh", "--methods",
                                help="comma list of hashing methods"),
    chunk: int = typer.Option(2000, "--chunk", min=2, help="stream points per online update"),
    seed: int = typer.Option(0, "--seed", help="seed of the split, augmentation, CNN and models"),
    out: Path = typer.Option(Path("out/hashing"), "--out", help="folder for results.json, "
                             "table.md and the mAP curves (PNG)"),
    quick: bool = typer.Option(False, "--quick", help="tiny sizes (for tests and smoke runs)"),
    split: str = typer.Option("test", "--split", help="test, or val: queries from the database "
                              "originals, for tuning without touching the test queries"),
    queries_per_class: int = typer.Option(100, "--queries-per-class", min=1,
                                          help="queries per class (at most; .npz: see "
                                          "--query-share)"),
    query_share: float = typer.Option(0.1, "--query-share", min=0.001, max=0.9,
                                      help=".npz data: at most this share of the items become "
                                      "queries (the rest is the database); digits-* keep their "
                                      "fixed protocol"),
    stream_size: int = typer.Option(20000, "--stream-size", min=10,
                                    help="digits: stream length after augmentation"),
    cnn_epochs: int = typer.Option(4, "--cnn-epochs", min=1, help="digits-cnn training epochs"),
    sdoh_lr: float | None = typer.Option(None, "--sdoh-lr", help="override SDOH's learning rate"),
    sdoh_sigma: float | None = typer.Option(None, "--sdoh-sigma", help="override SDOH's sigma"),
    sdoh_threshold: float | None = typer.Option(None, "--sdoh-threshold",
                                                help="override SDOH's stopping threshold"),
    sdoh_max_iter: int | None = typer.Option(None, "--sdoh-max-iter", min=0,
                                             help="override SDOH's iterations per chunk"),
    set_params: list[str] = typer.Option([], "--set", help="METHOD.PARAM=VALUE, repeatable: "
                                         "override a method's evaluation hyper-parameter, e.g. "
                                         "--set okh.alpha=0.5 (tuning on --split val)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Online hashing on a labelled stream: after each chunk every method updates, the whole
    database is re-encoded and the queries (digits: 100 per class; .npz: at most 10% of the
    items, 100 per class) are searched by Hamming ranking. Prints the split sizes and a
    table of mAP, mAP@1000 and precision within radius 2; writes JSON, a Markdown table and
    mAP-per-chunk curves (PNG)."""
    # deferred: loads numpy and the hash models; --help stays instant
    from vistream.models.hashing.evaluate import run_evaluation

    sdoh = {k: v for k, v in {"lr": sdoh_lr, "sigma": sdoh_sigma, "threshold": sdoh_threshold,
                              "max_iter": sdoh_max_iter}.items() if v is not None}
    try:
        bit_list = [int(b) for b in _csv(bits)]
    except ValueError:
        raise ValueError(f"--bits must be a comma list of integers, got {bits!r}") from None
    if not bit_list or not _csv(methods) or not _csv(data):
        raise ValueError("--data, --bits and --methods each need at least one entry")
    overrides = _overrides(set_params)
    doc = run_evaluation(_csv(data), bit_list, _csv(methods), chunk=chunk, seed=seed, out=out,
                         quick=quick, split=split, queries_per_class=queries_per_class,
                         stream_size=stream_size, sdoh_params=sdoh, cnn_epochs=cnn_epochs,
                         progress=progress, echo=typer.echo, query_share=query_share,
                         overrides=overrides)
    typer.echo("")
    typer.echo((out / "table.md").read_text())
    typer.echo(f"wrote {out / 'results.json'}, {out / 'table.md'} and "
               + ", ".join(str(out / r["curve_png"]) for r in doc["results"].values()))
