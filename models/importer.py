"""Bring your own backbone: turn pretrained weights made elsewhere into a vistream artifact
(``vistream import``).

Two sources, one result — an ordinary artifact (:mod:`models.artifacts`) that the features
stage runs and, when the network is one of the project's architectures, that ``vistream
compress abc`` and ``vistream train binary --init`` start from.

**A torchvision state dict** (``vistream import weights.pth --arch resnet18``). torchvision is
not a runtime dependency: its ResNet layout is mapped key by key onto the project's own
equivalent architecture, which keeps torchvision's layer order (``conv1``/``bn1`` -> ``stem.0``/
``stem.1``, ``layerS.B`` -> ``blocks.K``, ``downsample.0/1`` -> ``shortcut.0/1``, ``fc`` ->
``fc``). Supported: ``resnet18`` and ``resnet34`` (:data:`TORCHVISION`); the class count, the
stem width and every block's inner width are read off the tensors, so a torchvision ResNet with
another head (``num_classes=7``) or one pruned by inner width imports too. The imported model
computes exactly what torchvision's does (the tests compare logits with torchvision itself,
a development dependency). The file is read with ``torch.load(weights_only=True)`` (never
unpickles code) or as safetensors; a training checkpoint wrapping the state dict under
``state_dict``/``model``/``model_state_dict`` is unwrapped, a ``module.`` prefix
(DataParallel) dropped. Missing, unexpected and misshaped keys are listed (the first few).

**An ONNX file** (``vistream import model.onnx``). The graph is read with ``onnx`` and
translated into an :class:`models.backbones.onnx_net.OnnxNet` (convolutions, BN and linear
layers as modules, the other common operators as torch functions). Then:

(a) if its convolutions and classifier, in graph order and with their attributes, have the
    shapes of a project ResNet (``resnet18``, ``resnet34``, ``resnet20``, ``resnet56``;
    widths inferred), the weights are moved into that model — a BN folded into its conv by
    the exporter comes back as the conv's weight and a BN that adds the conv's bias
    (scale 1, mean 0, variance ``1 - eps``) — and the conversion is kept only if the project
    model's logits equal the graph's on a seeded random batch (relative tolerance 1e-4).
    The artifact is then a normal ``resnet18`` (etc.): prunable and a 1-bit starting point.
(b) otherwise the artifact's architecture is ``onnx_graph``: the features stage runs it (the
    classifier's input is the feature vector), and ``compress abc`` / ``train binary`` refuse
    it with a clear message. The original ONNX bytes are stored in the artifact either way.

Input spec and normalisation: ``input_size`` (default: the ONNX input's static size, else
224), ``mean``/``std`` (default ImageNet's). No weights are ever downloaded.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from torch import nn

from vistream.models.artifact_format import ArtifactError, read_artifact, write_artifact
from vistream.models.artifacts import export_artifact, load_artifact
from vistream.models.backbones import create_model
from vistream.models.backbones.extractor import IMAGENET_MEAN, IMAGENET_STD
from vistream.models.backbones.onnx_net import MODULE_OPS, OPS, OnnxNet
from vistream.models.backbones.resnet import STAGE_BLOCKS
from vistream.models.pruning.surgery import channel_plan
from vistream.models.train import load_checkpoint_model

#: torchvision architecture name -> the project's equivalent (same layer order)
TORCHVISION = {"resnet18": "resnet18", "resnet34": "resnet34"}
#: project architectures an ONNX graph is matched against, in this order
ONNX_MATCH = ("resnet18", "resnet34", "resnet20", "resnet56")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


class ImportRefused(ValueError):
    """The file cannot be imported; the message says why (shown without a traceback)."""


# ----------------------------------------------------------------------------- state dicts
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (torch ``.pth``/``.pt`` read with ``weights_only=True``, or
    ``.safetensors``); a checkpoint dict wrapping one is unwrapped, ``module.`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"{path} does not exist")
    blob = path.read_bytes()
    try:
        obj: Any = st_load(blob) if path.suffix == ".safetensors" else torch.load(
            io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user error
        raise ImportRefused(f"{path} is not a torch state dict or safetensors file "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for _ in range(2):  # a checkpoint {"epoch": .., "state_dict": {...}} (or nested once more)
        if isinstance(obj, dict) and not _is_state(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not _is_state(obj):
        kind = type(obj).__name__
        keys = f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else ""
        raise ImportRefused(f"{path} holds a {kind}{keys}, not a state dict (name -> tensor) nor a "
                            f"checkpoint wrapping one under {'/'.join(WRAPPER_KEYS)}")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def torchvision_keys(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename torchvision ResNet keys to the project's; keys that fit no rule are kept as they
    are (and reported as unexpected by :func:`from_torchvision`)."""
    counts = STAGE_BLOCKS[int(TORCHVISION[arch].removeprefix("resnet"))]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = {}
    for k, v in state.items():
        n = re.sub(r"^conv1\.", "stem.0.", k)
        n = re.sub(r"^bn1\.", "stem.1.", n)
        m = re.match(r"^layer([1-4])\.(\d+)\.(.*)$", n)
        if m and int(m.group(2)) < counts[int(m.group(1)) - 1]:
            rest = m.group(3).replace("downsample.", "shortcut.")
            n = f"blocks.{int(offsets[int(m.group(1)) - 1]) + int(m.group(2))}.{rest}"
        out[n] = v
    return out


def _shape_of(state, key, dim=0, default=None):
    t = state.get(key)
    return int(t.shape[dim]) if t is not None and t.dim() > dim else default


def from_torchvision(state: dict[str, torch.Tensor], arch: str):
    """The project model equivalent to torchvision's ``arch`` holding ``state``."""
    if arch not in TORCHVISION:
        raise ImportRefused(f"unsupported torchvision architecture {arch!r}: supported are "
                            f"{', '.join(TORCHVISION)} (other networks: export them to ONNX and "
                            "import the .onnx file)")
    ours = torchvision_keys(state, arch)
    n_blocks = sum(STAGE_BLOCKS[int(TORCHVISION[arch].removeprefix("resnet"))])
    base = _shape_of(ours, "stem.0.weight", 0, 64)
    widths = [_shape_of(ours, f"blocks.{k}.conv1.weight", 0, base * 2 ** min(3, k * 4 // n_blocks))
              for k in range(n_blocks)]
    kw = {"num_classes": _shape_of(ours, "fc.weight", 0, 1000),
          "in_chans": _shape_of(ours, "stem.0.weight", 1, 3), "base": base, "widths": widths}
    model = create_model(TORCHVISION[arch], **kw)
    want = model.state_dict()
    theirs = torchvision_keys({k: k for k in state}, arch)  # our name -> torchvision's
    missing = [n for n in want if n not in ours and not n.endswith("num_batches_tracked")]
    extra = [theirs[n] for n in ours if n not in want]
    shapes = [f"{theirs[n]} {tuple(ours[n].shape)} (expected {tuple(want[n].shape)})"
              for n in ours if n in want and ours[n].shape != want[n].shape]
    problems = [f"{label} ({len(items)}): {', '.join(map(str, items[:5]))}"
                + (", ..." if len(items) > 5 else "")
                for label, items in (("missing keys", [_tv_name(n, arch) for n in missing]),
                                     ("unexpected keys", extra), ("misshaped", shapes)) if items]
    if problems:
        raise ImportRefused(f"the weights do not fit torchvision's {arch}: " + "; ".join(problems))
    for n, t in want.items():
        if n.endswith("num_batches_tracked") and n not in ours:
            ours[n] = t
    model.load_state_dict({n: t.float() if t.is_floating_point() else t for n, t in ours.items()})
    return model.eval()


def _tv_name(ours: str, arch: str) -> str:
    """A project key under torchvision's name, for error messages."""
    counts = STAGE_BLOCKS[int(TORCHVISION[arch].removeprefix("resnet"))]
    n = re.sub(r"^stem\.0\.", "conv1.", re.sub(r"^stem\.1\.", "bn1.", ours))
    m = re.match(r"^blocks\.(\d+)\.(.*)$", n)
    if m:
        k, s = int(m.group(1)), 0
        while k >= counts[s]:
            k, s = k - counts[s], s + 1
        n = f"layer{s + 1}.{k}.{m.group(2).replace('shortcut.', 'downsample.')}"
    return n


# ----------------------------------------------------------------------------- ONNX
def _array(onnx_mod, tensor) -> np.ndarray:
    a = onnx_mod.numpy_helper.to_array(tensor)
    return a.astype(np.float32) if a.dtype in (np.float16, np.float64) else a


def _attrs(onnx_mod, node) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx_mod.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, (list, tuple)):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        elif not isinstance(v, (int, float, str)):
            v = _array(onnx_mod, v)
        out[a.name] = v
    return out


def translate_onnx(data: bytes, features: str | None = None) -> tuple[OnnxNet, dict]:
    """An ONNX model (bytes) -> (:class:`OnnxNet` with its weights, info). ``features`` names
    the tensor used as feature vector (default: the final classifier's input)."""
    # heavy: onnx is imported only by the importer
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user error
        raise ImportRefused(f"not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    g = proto.graph
    consts: dict[str, np.ndarray] = {t.name: _array(onnx, t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) < 1:
        raise ImportRefused(f"the graph has {len(inputs)} inputs and {len(g.output)} outputs: an image "
                            "backbone has one image input and a logits output")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ImportRefused(f"the graph's input has rank {len(dims)}: expected an NCHW image batch")
    nodes, state, unsupported = [], {}, []
    for idx, node in enumerate(g.node):
        a = _attrs(onnx, node)
        if node.op_type == "Constant":
            consts[node.output[0]] = np.asarray(a.get("value", a.get("value_float", a.get("value_ints"))))
            continue
        if node.op_type == "ConstantOfShape":  # its value attribute is a one-element tensor
            v = np.asarray(a.get("value", np.zeros(1, np.float32)))
            a = {"value": v.reshape(-1)[0].item(), "dtype": str(v.dtype)}
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
            continue
        spec = _module_spec(node, a, consts, idx)
        if spec is not None:
            key, params, spec_d = spec
            state.update({f"ops.{key}.{k}": torch.from_numpy(np.array(v)) for k, v in params.items()})
            nodes.append({"op": node.op_type, "in": [node.input[0]], "out": list(node.output[:1]),
                          "module": key, "spec": spec_d})
            continue
        if node.op_type not in OPS:
            unsupported.append(node.op_type)
            continue
        nodes.append({"op": node.op_type, "in": list(node.input), "out": list(node.output[:1]),
                      "attrs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items()}})
    if unsupported:
        known = sorted({*OPS, *MODULE_OPS, "Constant"})
        raise ImportRefused(f"unsupported ONNX operators: {', '.join(sorted(set(unsupported)))} "
                            f"(supported: {', '.join(known)})")
    used = {i for n in nodes for i in n["in"]}
    graph_consts = {}
    for k, (name, arr) in enumerate((n, a) for n, a in consts.items() if n in used):
        graph_consts[name] = {"key": f"c{k}", "shape": list(arr.shape), "dtype": str(arr.dtype)}
        state[f"consts.c{k}"] = torch.from_numpy(np.array(arr))
    outs = [o.name for o in g.output]  # vistream's own exports have (features, logits)
    logits = "logits" if "logits" in outs else outs[0]
    features = features or ("features" if "features" in outs and logits != "features" else None)
    graph = {"input": inputs[0].name, "logits": logits, "nodes": nodes, "consts": graph_consts,
             "features": features or _features_of(nodes, logits)}
    if graph["features"] not in {n["out"][0] for n in nodes} | {graph["input"]}:
        raise ImportRefused(f"--features-output {graph['features']!r} is no tensor of the graph")
    return _finish(graph, state, dims)


def _module_spec(node, a, consts, idx):
    """(module key, its tensors, its spec) for a weighted node with constant weights, else None."""
    op, ins = node.op_type, list(node.input)
    c = [consts.get(i) if i else None for i in ins]
    if op == "Conv" and len(ins) >= 2 and c[1] is not None and c[1].ndim == 4:
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ImportRefused(f"Conv node {node.name or idx}: auto_pad={a['auto_pad']} is not "
                                "supported (re-export with explicit pads)")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        spec = {"weight": list(c[1].shape), "group": int(a.get("group", 1)),
                "strides": list(a.get("strides", [1, 1])), "dilations": list(a.get("dilations", [1, 1])),
                "bias": len(c) > 2 and c[2] is not None}
        if pads[:2] == pads[2:]:
            spec["padding"] = pads[:2]
        else:
            spec["prepad"] = [pads[1], pads[3], pads[0], pads[2]]
        params = {"weight": c[1], **({"bias": c[2]} if spec["bias"] else {})}
        return f"n{idx}_conv", params, spec
    if op == "BatchNormalization" and len(ins) >= 5 and all(v is not None for v in c[1:5]):
        params = {"weight": c[1], "bias": c[2], "running_mean": c[3], "running_var": c[4],
                  "num_batches_tracked": np.zeros((), np.int64)}
        return f"n{idx}_bn", params, {"channels": int(c[1].shape[0]),
                                      "epsilon": float(a.get("epsilon", 1e-5))}
    linear_gemm = (op == "Gemm" and c[1] is not None and c[1].ndim == 2 and not a.get("transA", 0)
                   and float(a.get("alpha", 1.0)) == 1.0 and float(a.get("beta", 1.0)) == 1.0
                   and (len(c) < 3 or c[2] is None or c[2].ndim == 1))
    linear_matmul = op == "MatMul" and c[1] is not None and c[1].ndim == 2
    if linear_gemm or linear_matmul:
        w = c[1] if (op == "Gemm" and a.get("transB", 0)) else c[1].T
        has_bias = op == "Gemm" and len(c) > 2 and c[2] is not None
        params = {"weight": w, **({"bias": np.broadcast_to(c[2], (w.shape[0],))} if has_bias else {})}
        return f"n{idx}_linear", params, {"weight": list(w.shape), "bias": has_bias}
    return None


def _features_of(nodes: list[dict], logits: str) -> str:
    """The classifier's input: walk back from the output over Softmax/Identity/Flatten-like
    nodes to the last linear module, and take what it reads."""
    producer = {n["out"][0]: n for n in nodes}
    name = logits
    for _ in range(4):
        n = producer.get(name)
        if n is None:
            break
        if n.get("module") and n["op"] in ("Gemm", "MatMul"):
            return n["in"][0]
        if n["op"] not in ("Softmax", "Identity", "Dropout", "Reshape", "Flatten"):
            break
        name = n["in"][0]
    return logits


def _finish(graph: dict, state: dict, dims: list) -> tuple[OnnxNet, dict]:
    if dims[3] in (1, 3) and dims[1] not in (1, 3):  # NHWC input (tf2onnx, Keras)
        graph["nhwc"] = True
        dims = [dims[0], dims[3], dims[1], dims[2]]
    in_chans = int(dims[1] or 3)
    size = [int(dims[2] or 224), int(dims[3] or 224)]
    probe = torch.randn(2, in_chans, *size, generator=torch.Generator().manual_seed(0))
    for batch_one in (False, True):
        net = OnnxNet(graph, in_chans=in_chans, batch_one=batch_one)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ImportRefused(f"the graph's weights do not fit its nodes: {str(exc)[:300]}") from None
        try:
            with torch.no_grad():
                logits, feats = net.eval()(probe), net.forward_features(probe)
            break
        except Exception as exc:  # noqa: BLE001 - a graph that does not run is a user error
            if batch_one or dims[0] != 1:
                raise ImportRefused(f"the graph does not run on a {in_chans}x{size[0]}x{size[1]} batch: "
                                    f"{type(exc).__name__}: {str(exc)[:300]}") from None
    net = create_model("onnx_graph", graph=graph, num_classes=int(logits.shape[-1]),
                       in_chans=in_chans, num_features=int(feats.shape[1]), batch_one=batch_one)
    net.load_state_dict(state)
    return net.eval(), {"input_size": size if dims[2] and dims[3] else None, "batch_one": batch_one}


# ----------------------------------------------------------------------------- ONNX -> project
def _convs_in_order(net: OnnxNet) -> list[tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]:
    """(conv, weight, bias) of every conv in graph order, a BN reading only it folded in."""
    nodes = net.graph["nodes"]
    readers: dict[str, list[dict]] = {}
    for n in nodes:
        for i in n["in"]:
            readers.setdefault(i, []).append(n)
    out = []
    for n in nodes:
        if n["op"] != "Conv" or not n.get("module"):
            continue
        conv = net.ops[n["module"]]
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
        r = readers.get(n["out"][0], [])
        if len(r) == 1 and r[0]["op"] == "BatchNormalization" and r[0].get("module"):
            bn = net.ops[r[0]["module"]]
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w, b = w * scale.view(-1, 1, 1, 1), (b - bn.running_mean) * scale + bn.bias.detach()
        out.append((conv, w, b))
    return out


def _candidate(arch: str, convs, fc: nn.Linear):
    """The project model ``arch`` with the widths these convs imply, or None."""
    base = int(convs[0][1].shape[0])
    if arch in ("resnet18", "resnet34"):
        n_blocks = sum(STAGE_BLOCKS[int(arch[6:])])
    else:
        n_blocks = 3 * (int(arch[6:]) - 2) // 6
    widths, i = [], 1
    for _ in range(n_blocks):
        if i >= len(convs):
            return None
        widths.append(int(convs[i][1].shape[0]))
        i += 2 + (i + 2 < len(convs) and convs[i + 2][1].shape[-1] == 1)
    try:
        return create_model(arch, num_classes=fc.out_features, in_chans=int(convs[0][1].shape[1]),
                            base=base, widths=widths)
    except (ValueError, KeyError, TypeError):
        return None


def match_project(net: OnnxNet, input_size: list[int]):
    """The project ResNet computing what ``net`` computes (see the module docstring), or None."""
    convs = _convs_in_order(net)
    fcs = [m for m in net.ops.values() if isinstance(m, nn.Linear)]
    if not convs or len(fcs) != 1:
        return None
    probe = torch.randn(2, int(net.config["in_chans"]), *input_size,
                        generator=torch.Generator().manual_seed(1))
    for arch in ONNX_MATCH:
        model = _candidate(arch, convs, fcs[0])
        if model is None:
            continue
        mine = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if len(mine) != len(convs) or any(
                m.weight.shape != w.shape or m.stride != c.stride or m.padding != c.padding
                for m, (c, w, _) in zip(mine, convs)):
            continue
        bns = {id(m): bn for m, bn in _conv_bn_pairs(model)}
        with torch.no_grad():
            for m, (_, w, b) in zip(mine, convs):
                bn = bns[id(m)]
                m.weight.copy_(w)
                bn.weight.fill_(1.0)
                bn.bias.copy_(b)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            model.fc.weight.copy_(fcs[0].weight)
            model.fc.bias.copy_(fcs[0].bias if fcs[0].bias is not None else torch.zeros(fcs[0].out_features))
            model.eval()
            try:
                ref, got = net(probe), model(probe)
            except RuntimeError:
                continue
        if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4,
                                                     atol=1e-4 * max(1.0, float(ref.abs().max()))):
            return model
    return None


def _conv_bn_pairs(model) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Each conv of a project ResNet with the BN that follows it (module order)."""
    mods = list(model.modules())
    return [(m, nxt) for m, nxt in zip(mods, mods[1:]) if isinstance(m, nn.Conv2d)
            and isinstance(nxt, nn.BatchNorm2d)]


# ----------------------------------------------------------------------------- the command
def import_backbone(source: str | Path, out: str | Path, arch: str | None = None,
                    input_size: int | None = None, mean: list[float] | None = None,
                    std: list[float] | None = None, num_classes: int | None = None,
                    features_output: str | None = None, convert: bool = True,
                    embed_onnx: bool = True) -> dict:
    """``vistream import``: write ``out`` from a torchvision state dict (``arch`` given) or an
    ONNX file (``.onnx``). Returns the manifest; its ``source`` entry says what was done.
    ``embed_onnx``: store an ONNX graph in the artifact (the user's own for ONNX sources)."""
    source = Path(source)
    if not source.is_file():
        raise ImportRefused(f"{source} does not exist")
    mean = list(mean or IMAGENET_MEAN)
    std = list(std or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ImportRefused("--mean and --std take three values each (RGB), std > 0")
    blob = source.read_bytes()
    info: dict[str, Any] = {"file": source.name, "sha256": hashlib.sha256(blob).hexdigest()}
    onnx_bytes = b""
    if source.suffix.lower() == ".onnx" or (arch is None and blob[:1] == b"\x08"):
        if arch is not None:
            raise ImportRefused("--arch is for torchvision state dicts; an ONNX file brings its graph")
        net, meta = translate_onnx(blob, features_output)
        size = [input_size] * 2 if input_size else (meta["input_size"] or [224, 224])
        project = match_project(net, size) if convert else None
        model = project if project is not None else net
        info.update(kind="onnx", converted_to=project.config["arch"] if project is not None else None)
        onnx_bytes = blob
    else:
        if arch is None:
            raise ImportRefused(f"{source.name}: give --arch (torchvision name: "
                                f"{', '.join(TORCHVISION)}) for a state dict, or import an .onnx file")
        model = from_torchvision(read_state_dict(source), arch)
        size = [input_size or 224] * 2
        info.update(kind="torchvision", torchvision_arch=arch)
    found = int(model.config["num_classes"])
    if num_classes is not None and num_classes != found:
        raise ImportRefused(f"--num-classes {num_classes} but the classifier has {found} outputs")
    in_chans = int(model.config.get("in_chans", 3))
    if in_chans != 3:
        raise ImportRefused(f"the model takes {in_chans} input channels: the features stage feeds "
                            "RGB images (3 channels)")
    _check_runs(model, size)
    spec = {"size": size, "channels": in_chans, "color": "RGB", "layout": "NCHW",
            "dtype": "float32", "range": [0.0, 1.0]}
    man = export_artifact(model, out, method="imported", input_spec=spec,
                          normalization={"mean": mean, "std": std}, extra={"source": info},
                          onnx=embed_onnx and not onnx_bytes)
    if onnx_bytes and embed_onnx:  # keep the user's own graph rather than a re-export
        man, weights, _ = read_artifact(out)
        man["onnx"] = {"bytes": len(onnx_bytes), "outputs": ["logits"], "original": True}
        man = write_artifact(out, man, weights, onnx_bytes)
    return man


def _check_runs(model, size: list[int]) -> None:
    """Refuse an input size the model cannot take (a graph with fixed reshapes, too small)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, *size))
    except Exception as exc:  # noqa: BLE001 - any failure here is the chosen input size's
        raise ImportRefused(f"the model does not run on {size[0]}x{size[1]} inputs ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); choose another --input-size") from None


def summary(man: dict, path: str | Path) -> dict:
    """The manifest figures ``vistream import`` prints."""
    return {"artifact": str(path), "model_id": man["model_id"], "arch": man["arch"],
            "num_classes": man["config"].get("num_classes"), "num_features": man["num_features"],
            "input_size": man["input_spec"]["size"], "mean": man["normalization"]["mean"],
            "std": man["normalization"]["std"], "flops": man["flops"], "params": man["params"],
            "source": man["source"], "onnx_bytes": man["onnx"]["bytes"],
            "prunable": man["arch"] != "onnx_graph", "sha256": man["sha256"]}


def prunable_base(model, num_classes: int, seed: int = 0, echo=print):
    """``model`` ready for ``compress abc`` on a dataset of ``num_classes`` classes: refused
    when no channel plan exists (an ``onnx_graph`` artifact), given a fresh seeded classifier
    when its class count differs (an ImageNet head on another dataset)."""
    try:
        channel_plan(model)
    except ValueError:
        arch = model.config.get("arch")
        raise ImportRefused(f"a {arch} artifact cannot be pruned: compress abc works on the project's "
                            "ResNets and VGG-16 (an ONNX import that matched none of them runs in the "
                            "features stage only)") from None
    old = int(model.config.get("num_classes", num_classes))
    if old != num_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        model.config["num_classes"] = num_classes
        echo(f"the base has {old} classes, the dataset {num_classes}: a new seeded classifier "
             "replaces its head (the backbone's weights are kept)")
    return model


# ----------------------------------------------------------------------------- 1-bit starts
#: float architecture -> the 1-bit twin's (depth, layout)
BINARY_TWINS = {"resnet18": (18, "imagenet"), "resnet20": (20, "cifar"), "resnet56": (56, "cifar")}


def _load_float(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"--init {path}: no such file (give scratch, float or an artifact/checkpoint)")
    if path.suffix == ".pt":
        return load_checkpoint_model(path).eval()
    try:
        return load_artifact(path)
    except ArtifactError as exc:
        raise ImportRefused(f"--init: {exc} (`vistream import` turns torchvision weights or ONNX "
                            "files into artifacts)") from None


def binary_layout(path: str | Path) -> dict:
    """The 1-bit network a float artifact (``vistream import``, ``vistream export``) can start:
    ``{"arch", "depth", "layout", "base"}``; refused for architectures without a 1-bit twin or
    with pruned (non-default) widths."""
    model = _load_float(path)
    arch, cfg = model.config["arch"], model.config
    if arch not in BINARY_TWINS or getattr(model, "runs_as_deployed", False):
        raise ImportRefused(f"--init {path}: a {arch} has no 1-bit twin; 1-bit networks start from "
                            f"float {', '.join(BINARY_TWINS)}")
    depth, layout = BINARY_TWINS[arch]
    default = create_model(arch, base=int(cfg["base"]), num_classes=1).config["widths"]
    if list(cfg["widths"]) != list(default):
        raise ImportRefused(f"--init {path}: its block widths were pruned; a 1-bit network starts "
                            "from a full-width model")
    return {"arch": arch, "depth": depth, "layout": layout, "base": int(cfg["base"])}


def binary_start(path: str | Path, student):
    """The float model of ``path`` ready for :func:`models.binary.teacher.init_from_float` into
    ``student``: same depth and width checked; a classifier of another class count is replaced
    by the student's own (a new head, the backbone's weights transferred)."""
    want = binary_layout(path)
    cfg = student.config
    if (cfg["depth"], cfg["layout"], cfg["base"]) != (want["depth"], want["layout"], want["base"]):
        raise ImportRefused(f"--init {path} is a {want['arch']} of base {want['base']}; the 1-bit "
                            f"network is depth {cfg['depth']} ({cfg['layout']}) of base {cfg['base']}")
    teacher = _load_float(path)
    if teacher.fc.weight.shape != student.fc.weight.shape:
        teacher.fc = student.fc
    return teacher


def binary_teacher(path: str | Path, depth: int, layout: str, base: int):
    """RBCN/GBCN's float teacher from a file: its stage outputs must have the student's shapes
    (same depth, layout and base; only ``stem`` and ``blocks`` are used, never its head)."""
    want = binary_layout(path)
    if (want["depth"], want["layout"], want["base"]) != (depth, layout, base):
        raise ImportRefused(f"--teacher {path} is a {want['arch']} of base {want['base']}; the 1-bit "
                            f"network is depth {depth} ({layout}) of base {base}")
    return _load_float(path).eval()
