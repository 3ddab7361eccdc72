"""``vistream import``: bring your own backbone (a torchvision state dict or an ONNX file) as
an artifact (:mod:`models.importer`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vistream.cli.main import app


def _triple(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise typer.BadParameter(f"{name} takes three comma-separated numbers (R,G,B), got {text!r}",
                                 param_hint=name)
    return vals


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="torchvision state dict (.pth/.pt/.safetensors, or a "
                                  "checkpoint holding one) or an ONNX file (.onnx)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact file to write (.vsa)"),
    arch: str | None = typer.Option(None, "--arch", help="torchvision architecture of a state dict: "
                                    "resnet18 or resnet34 (not for ONNX files)"),
    input_size: int | None = typer.Option(None, "--input-size", min=8,
                                          help="square input size (default: the ONNX input's, else 224)"),
    mean: str | None = typer.Option(None, "--mean", help="R,G,B mean of [0,1] pixels "
                                    "(default ImageNet's 0.485,0.456,0.406)"),
    std: str | None = typer.Option(None, "--std", help="R,G,B std (default ImageNet's 0.229,0.224,0.225)"),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1,
                                           help="check the classifier has this many outputs "
                                           "(it is always read off the weights)"),
    features_output: str | None = typer.Option(None, "--features-output",
                                               help="ONNX: tensor used as feature vector "
                                               "(default: the final classifier's input)"),
    convert: bool = typer.Option(True, "--convert/--no-convert",
                                 help="ONNX: turn a graph that matches a project ResNet into that "
                                 "model (prunable, 1-bit starting point); --no-convert keeps the graph"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="also store an ONNX graph in the artifact "
                              "(an ONNX source's own graph; about the weights' size again)"),
) -> None:
    """Turn pretrained weights made elsewhere into an artifact that the features stage runs
    and that `vistream compress abc --base` and `vistream train binary --init` start from.
    Prints the manifest summary as JSON. Nothing is downloaded."""
    # deferred: loads torch and onnx; --help stays instant
    from vistream.models.importer import ImportRefused, import_backbone, summary

    m, s = _triple(mean, "--mean"), _triple(std, "--std")
    typer.echo(f"importing {source} ...", err=True)
    try:
        man = import_backbone(source, out, arch=arch, input_size=input_size, mean=m, std=s,
                              num_classes=num_classes, features_output=features_output,
                              convert=convert, embed_onnx=onnx)
    except ImportRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    info = summary(man, out)
    how = (f"converted to {info['arch']}" if info["source"].get("converted_to")
           else "kept as an ONNX graph (features stage only)" if info["arch"] == "onnx_graph"
           else f"mapped onto {info['arch']}")
    typer.echo(f"wrote {out}: {how}, {info['num_classes']} classes, {info['num_features']}-d features, "
               f"{info['flops'] / 1e9:.2f} GFLOPs at {info['input_size'][0]}x{info['input_size'][1]}",
               err=True)
    typer.echo(json.dumps(info))
