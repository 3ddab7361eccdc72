"""``onnx_graph``: an ONNX graph run by PyTorch, so an imported ONNX backbone is an artifact
like any other (``vistream import model.onnx``, :mod:`models.importer`).

The graph is kept as data: ``config["graph"]`` lists the nodes (op type, input and output
names, attributes) and the constants' shapes, so :func:`models.artifacts.load_artifact`
rebuilds the module from the manifest alone and loads every weight from the safetensors part
(nothing is unpickled, nothing but the manifest is interpreted). ``Conv``, ``BatchNormalization``
and ``Gemm``/``MatMul`` with constant weights become ``nn.Conv2d``, ``nn.BatchNorm2d`` and
``nn.Linear`` modules, so FLOPs counting (forward hooks) and the features stage's BN folding
see them as in any backbone; the other operators are applied as torch functions in graph order.

Supported operators (:data:`OPS`): the common set of image classifiers exported from PyTorch,
TensorFlow (tf2onnx) or Keras — convolutions, pooling, BN, element-wise arithmetic and
activations, reshaping (Flatten, Reshape, Shape/Gather/Unsqueeze/Concat chains, Transpose,
Squeeze, Slice), Gemm/MatMul, ReduceMean, Pad, Softmax. An unsupported operator is refused
by name when the graph is imported, never when it runs.

``forward(x)`` returns the graph's output (logits); ``forward_features(x)`` returns the tensor
recorded as ``features`` (the input of the final classifier, flattened to (n, d)). Both take
NCHW batches; a graph with an NHWC input (``graph["nhwc"]``, as tf2onnx exports Keras models)
gets them transposed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.backbones.registry import register_model

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8,
           "int8": torch.int8}
# ONNX TensorProto data types -> torch (Cast)
_ONNX_TYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64,
               9: torch.bool, 10: torch.float16, 11: torch.float64}


def _ints(v) -> list[int]:
    return [int(i) for i in v.flatten().tolist()]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _pool_pads(x: torch.Tensor, a: dict, fill: float) -> tuple[torch.Tensor, list[int]]:
    """ONNX pads [h0, w0, h1, w1]: symmetric ones go to the torch op, others to F.pad."""
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] == pads[2:] and all(p <= k // 2 for p, k in zip(pads[:2], a["kernel_shape"])):
        return x, pads[:2]
    return F.pad(x, [pads[1], pads[3], pads[0], pads[2]], value=fill), [0, 0]


def _maxpool(x, a):
    x, pad = _pool_pads(x, a, float("-inf"))
    return F.max_pool2d(x, a["kernel_shape"], a.get("strides", [1, 1]), pad,
                        a.get("dilations", [1, 1]), ceil_mode=bool(a.get("ceil_mode", 0)))


def _avgpool(x, a):
    x, pad = _pool_pads(x, a, 0.0)
    return F.avg_pool2d(x, a["kernel_shape"], a.get("strides", [1, 1]), pad,
                        ceil_mode=bool(a.get("ceil_mode", 0)),
                        count_include_pad=bool(a.get("count_include_pad", 0)))


def _reshape(x, shape, a):
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(x, a):
    ax = _axis(int(a.get("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:ax]), -1)


def _gemm(A, B, C, a):
    if a.get("transA", 0):
        A = A.t()
    if a.get("transB", 0):
        B = B.t()
    y = float(a.get("alpha", 1.0)) * (A @ B)
    return y if C is None else y + float(a.get("beta", 1.0)) * C


def _clip(x, lo, hi, a):
    lo = float(lo) if lo is not None else a.get("min")
    hi = float(hi) if hi is not None else a.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _axes(args, a, k: int = 1):
    """Axes from the attribute (old opsets) or the k-th input (new opsets)."""
    if "axes" in a:
        return list(a["axes"])
    return _ints(args[k]) if len(args) > k and args[k] is not None else None


def _squeeze(x, *rest, a):
    axes = _axes([x, *rest], a)
    if axes is None:
        return x.squeeze()
    for ax in sorted((_axis(i, x.dim()) for i in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(x, *rest, a):
    for ax in sorted(_axes([x, *rest], a)):
        x = x.unsqueeze(_axis(ax, x.dim() + 1))
    return x


def _reduce_mean(x, *rest, a):
    axes = _axes([x, *rest], a)
    keep = bool(a.get("keepdims", 1))
    if axes is None:
        return x.mean().reshape([1] * x.dim()) if keep else x.mean()
    return x.mean(dim=[_axis(i, x.dim()) for i in axes], keepdim=keep)


def _slice(x, starts, ends, axes=None, steps=None, a=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.dim())
        n = x.shape[ax]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), n), min(max(e, 0), n)
        else:
            s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
        x = torch.index_select(x, ax, torch.arange(s, e, st, device=x.device))
    return x


def _constant_of_shape(shape, a):
    return torch.full(_ints(shape), a.get("value", 0.0), dtype=_DTYPES[a.get("dtype", "float32")])


def _pad(x, pads, value=None, *rest, a):
    p = _ints(pads) if pads is not None else list(a["pads"])
    half = len(p) // 2
    torch_pads: list[int] = []
    for d in reversed(range(half)):
        torch_pads += [p[d], p[d + half]]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a.get("mode", "constant")]
    fill = float(value) if value is not None and mode == "constant" else 0.0
    if mode == "constant":
        return F.pad(x, torch_pads, mode=mode, value=fill)
    return F.pad(x, torch_pads, mode=mode)


def _shape(x, a):
    return torch.tensor(list(x.shape), dtype=torch.int64)[a.get("start", 0):a.get("end")]


def _gather(x, idx, a):
    ax = _axis(int(a.get("axis", 0)), x.dim())
    flat = idx.reshape(-1).long()
    flat = torch.where(flat < 0, flat + x.shape[ax], flat)
    return torch.index_select(x, ax, flat).reshape([*x.shape[:ax], *idx.shape, *x.shape[ax + 1:]])


# op type -> function(*inputs, a=attrs) -> one output
OPS: dict[str, Any] = {
    "Relu": lambda x, a: F.relu(x),
    "LeakyRelu": lambda x, a: F.leaky_relu(x, float(a.get("alpha", 0.01))),
    "Sigmoid": lambda x, a: torch.sigmoid(x),
    "Tanh": lambda x, a: torch.tanh(x),
    "Elu": lambda x, a: F.elu(x, float(a.get("alpha", 1.0))),
    "HardSigmoid": lambda x, a: torch.clamp(float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0, 1),
    "HardSwish": lambda x, a: F.hardswish(x),
    "Clip": lambda x, lo=None, hi=None, a=None: _clip(x, lo, hi, a),
    "Add": lambda x, y, a: x + y,
    "Sub": lambda x, y, a: x - y,
    "Mul": lambda x, y, a: x * y,
    "Div": lambda x, y, a: x / y,
    "Pow": lambda x, y, a: torch.pow(x, y),
    "Sqrt": lambda x, a: torch.sqrt(x),
    "Neg": lambda x, a: -x,
    "Identity": lambda x, a: x,
    "Dropout": lambda x, *rest, a: x,
    "Cast": lambda x, a: x.to(_ONNX_TYPES[int(a["to"])]),
    "MaxPool": lambda x, a: _maxpool(x, a),
    "AveragePool": lambda x, a: _avgpool(x, a),
    "GlobalAveragePool": lambda x, a: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x, a: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": lambda x, a: _flatten(x, a),
    "Reshape": lambda x, s, a: _reshape(x, s, a),
    "Transpose": lambda x, a: x.permute(*a["perm"]) if "perm" in a else x.permute(
        *reversed(range(x.dim()))),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda *xs, a: torch.cat(xs, dim=_axis(int(a["axis"]), xs[0].dim())),
    "Shape": lambda x, a: _shape(x, a),
    "Gather": lambda x, i, a: _gather(x, i, a),
    "Slice": _slice,
    "ConstantOfShape": lambda s, a: _constant_of_shape(s, a),
    "Pad": _pad,
    "Gemm": lambda A, B, C=None, a=None: _gemm(A, B, C, a),
    "MatMul": lambda x, y, a: torch.matmul(x, y),
    "Softmax": lambda x, a: torch.softmax(x, dim=_axis(int(a.get("axis", -1)), x.dim())),
    "ReduceMean": _reduce_mean,
}
#: operators that become modules when their weights are constants (``Gemm``/``MatMul`` also
#: run as functions when they are not a plain linear layer)
MODULE_OPS = ("Conv", "BatchNormalization", "Gemm", "MatMul")


def _bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return m(x)
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def make_module(op: str, spec: dict) -> nn.Module:
    """The module a weighted node becomes, from the shapes recorded in its node spec."""
    if op == "Conv":
        out_c, in_per_group, *k = spec["weight"]
        groups = int(spec.get("group", 1))
        return nn.Conv2d(in_per_group * groups, out_c, tuple(k), tuple(spec.get("strides", [1, 1])),
                         tuple(spec.get("padding", [0, 0])), tuple(spec.get("dilations", [1, 1])),
                         groups, bias=bool(spec.get("bias")))
    if op == "BatchNormalization":
        return nn.BatchNorm2d(int(spec["channels"]), eps=float(spec.get("epsilon", 1e-5)))
    if op in ("Gemm", "MatMul"):
        out_f, in_f = spec["weight"]
        return nn.Linear(in_f, out_f, bias=bool(spec.get("bias")))
    raise ValueError(f"no module for ONNX op {op}")


def default_graph(in_chans: int, num_classes: int) -> dict:
    """The smallest graph: GlobalAveragePool -> Flatten -> Gemm (features: the pooled pixels)."""
    return {"input": "input", "logits": "logits", "features": "pooled", "consts": {}, "nodes": [
        {"op": "GlobalAveragePool", "in": ["input"], "out": ["gap"], "attrs": {}},
        {"op": "Flatten", "in": ["gap"], "out": ["pooled"], "attrs": {"axis": 1}},
        {"op": "Gemm", "in": ["pooled"], "out": ["logits"], "module": "fc",
         "spec": {"weight": [max(1, num_classes), in_chans], "bias": True}}]}


class OnnxNet(nn.Module):
    """An ONNX graph as a module (see the module docstring)."""

    def __init__(self, graph: dict | None = None, num_classes: int = 0, in_chans: int = 3,
                 num_features: int = 0, batch_one: bool = False) -> None:
        super().__init__()
        if graph is None:  # built by name alone: a linear classifier of the pooled pixels
            graph, num_features = default_graph(in_chans, num_classes), in_chans
        self.config = {"graph": graph, "num_classes": num_classes, "in_chans": in_chans,
                       "num_features": num_features, "batch_one": batch_one}
        self.graph = graph
        self.num_features = int(num_features)
        self.batch_one = bool(batch_one)
        self.ops = nn.ModuleDict()
        self.consts = nn.Module()
        for c in graph["consts"].values():
            self.consts.register_buffer(c["key"], torch.zeros(c["shape"], dtype=_DTYPES[c["dtype"]]))
        for node in graph["nodes"]:
            unknown = node["op"] not in OPS and not node.get("module")
            if unknown:
                raise ValueError(f"ONNX operator {node['op']} is not supported")
            if node.get("module"):
                self.ops[node["module"]] = make_module(node["op"], node["spec"])
        self._const_keys = {name: c["key"] for name, c in graph["consts"].items()}

    def _run(self, x: torch.Tensor, want: tuple[str, ...]) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = {n: getattr(self.consts, k) for n, k in self._const_keys.items()}
        env[self.graph["input"]] = x.permute(0, 2, 3, 1) if self.graph.get("nhwc") else x
        for node in self.graph["nodes"]:
            args = [env[i] if i else None for i in node["in"]]
            a = node.get("attrs", {})
            if node.get("module"):
                m = self.ops[node["module"]]
                x0 = args[0]
                if node["op"] == "Conv":
                    pre = node["spec"].get("prepad")
                    out = m(F.pad(x0, pre) if pre else x0)
                elif node["op"] == "BatchNormalization":
                    out = _bn(m, x0)
                else:
                    out = m(x0)
            else:
                out = OPS[node["op"]](*args, a=a)
            env[node["out"][0]] = out
        return [env[w] for w in want]

    def _outputs(self, x: torch.Tensor, want: tuple[str, ...]) -> list[torch.Tensor]:
        if not self.batch_one or x.shape[0] == 1:
            return self._run(x, want)
        parts = [self._run(x[i:i + 1], want) for i in range(x.shape[0])]
        return [torch.cat([p[k] for p in parts]) for k in range(len(want))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x, (self.graph["features"],))[0].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x, (self.graph["logits"],))[0]


@register_model
def onnx_graph(**kwargs) -> OnnxNet:
    return OnnxNet(**kwargs)
