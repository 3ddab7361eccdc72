"""FLOPs and parameter counts.

Convention (explicit, and the same as ``torch.utils.flop_counter.FlopCounterMode``):
**FLOPs = 2 x multiply-accumulates** of convolutions and linear layers, for one input image.
Like torch's counter, batch-norm, activations, pooling, additions and biases are not counted
(on these networks they are well under 1% of the total). ``macs = flops / 2``.

Counted by forward hooks on a single forward pass, so it follows the real, physically pruned
shapes (no masks are involved anywhere in this project).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vistream.models.binary.layers import BinaryConv2d
from vistream.models.deploy import deployable, optimize_for_cpu


@dataclass(frozen=True)
class Cost:
    flops: int   # 2 x MACs, per image
    params: int  # all parameters (conv, BN affine, linear); buffers are not counted

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def layer_macs(model, input_size: tuple[int, int] = (32, 32),
               in_chans: int | None = None) -> list[tuple[object, int]]:
    """(module, multiply-accumulates) of every conv and linear layer, in call order, for one
    forward pass of one image of ``input_size`` (eval mode; the training mode is restored)."""
    if in_chans is None:
        in_chans = int(getattr(model, "config", {}).get("in_chans", 3))
    found: list[tuple[object, int]] = []

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        found.append((m, out[0].numel() * (m.in_channels // m.groups) * k))

    def linear_hook(m: nn.Linear, inp, out) -> None:
        found.append((m, m.in_features * m.out_features * (out.numel() // out.shape[-1] // out.shape[0])))

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def count_flops(model, input_size: tuple[int, int] = (32, 32), in_chans: int | None = None) -> int:
    """FLOPs (2 x MACs) of one forward pass of one image of ``input_size``."""
    return int(2 * sum(macs for _, macs in layer_macs(model, input_size, in_chans)))


def binary_split(model, input_size: tuple[int, int] = (32, 32),
                 in_chans: int | None = None) -> tuple[int, int]:
    """(binary MACs, float FLOPs) of a 1-bit network: the MACs of its binary convs (XNOR/popcount
    work in the packed runtime) and 2 x the MACs of everything else."""
    binary = total = 0
    for m, macs in layer_macs(model, input_size, in_chans):
        total += macs
        binary += macs if isinstance(m, BinaryConv2d) else 0
    return binary, 2 * (total - binary)


def model_cost(model, input_size: tuple[int, int] = (32, 32)) -> Cost:
    return Cost(count_flops(model, input_size), count_params(model))


def torch_flops(model, input_size: tuple[int, int] = (32, 32), in_chans: int = 3) -> int:
    """The same figure from ``torch.utils.flop_counter`` (used by the tests as a reference)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, in_chans, *input_size))
    return int(fc.get_total_flops())


def interleaved_timings(fns: dict, rounds: int, calls: int, progress=None) -> dict[str, list[float]]:
    """Per-round fastest call (ms) of each function: one warm-up call each (weight layouts,
    allocator, thread pools), then ``rounds`` rounds in which every function is called
    ``calls`` times, in alternating order. On shared CPUs a function timed alone in a busy
    moment can look 50% slower; interleaving and taking minima keep the ratios comparable.
    ``progress`` is called after each round."""
    names = list(fns)
    for f in fns.values():
        f()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            best = float("inf")
            for _ in range(calls):
                t0 = time.perf_counter()
                fns[n]()
                best = min(best, time.perf_counter() - t0)
            out[n].append(1000 * best)
        if progress:
            progress()
    return out


def compare_latency(models: list, batch: int = 32, input_size: tuple[int, int] = (32, 32),
                    rounds: int = 7, reps: int = 3, threads: int | None = 1,
                    deploy: bool | list[bool] = False) -> list[float]:
    """Milliseconds per forward pass of ``batch`` images for several models, measured
    interleaved (:func:`interleaved_timings`, ``rounds`` x ``reps`` calls each) and reduced
    with the minimum (the ``timeit`` convention).
    ``deploy`` (one flag, or one per model) measures a model in its deployed form, BN folded
    and in channels-last memory (:func:`models.deploy.optimize_for_cpu`, a copy: the caller's
    model is untouched), so a model can be listed twice to measure both forms."""
    flags = deploy if isinstance(deploy, list) else [deploy] * len(models)
    if len(flags) != len(models):
        raise ValueError("deploy needs one flag per model")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        runs = []
        for m, deployed in zip(models, flags):
            m = m.cpu().eval()
            x = torch.randn(batch, int(getattr(m, "config", {}).get("in_chans", 3)), *input_size)
            if deployed and deployable(m):
                m = optimize_for_cpu(m, input_size=tuple(input_size))
                x = x.contiguous(memory_format=torch.channels_last)
            runs.append((m, x))
        with torch.inference_mode():
            times = interleaved_timings({i: (lambda m=m, x=x: m(x)) for i, (m, x) in enumerate(runs)},
                                        rounds, reps)
        return [min(times[i]) for i in range(len(runs))]
    finally:
        torch.set_num_threads(old)
