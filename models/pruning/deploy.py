"""The deployed form of a pruned float backbone: what runs, at the speed its FLOPs allow.

A pruned ResNet is physically smaller (:mod:`models.pruning.surgery`), but its inner widths are
whatever the search left: 7, 13, 22 channels. CPU convolution kernels work on SIMD groups of
channels (8 float32 lanes with AVX2, 16 with AVX-512), and oneDNN's blocked and channels-last
kernels handle a remainder group at close to the cost of a full one, or fall back to slower
code. So the deployed form is:

1. every inner width zero-padded up to a multiple ``m`` (:func:`pad_widths`; ``m = 1`` leaves
   them as they are). The new channels have zero conv weights and a BatchNorm that outputs 0,
   and the next conv reads them with zero weights: the function is unchanged (the outputs
   differ only by the rounding of a float sum over more, zero, terms);
2. BatchNorm folded into the convs and channels-last memory (:func:`models.deploy.optimize_for_cpu`).

``m`` is chosen by measuring (:func:`deploy_pruned`): each candidate multiple (1, 8, 16) is
timed in its deployed form at batch 1 and batch 32 on this CPU, interleaved, and the fastest
overall (geometric mean over the batches) wins; padding is used only where it measured faster.
The choice and every candidate's timings form the ``deploy`` record that
:func:`export_deployed` writes into the artifact's manifest (``vistream bench backbone
--deploy-out``), and :func:`load_deployed` returns such an artifact in the recorded form.
(:func:`models.deploy.optimize_for_cpu` does not read the record: it is also used by the
decoupling methods, which may not depend on pruning; import-linter's independence contract.)
FLOPs figures (the speedup target) stay those of the pruned
widths: padding is an implementation choice, not a bigger model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vistream.models.backbones import create_model
from vistream.models.deploy import optimize_for_cpu
from vistream.models.pruning.surgery import channel_plan

CANDIDATES = (1, 8, 16)


def padded(widths: Sequence[int], multiple: int) -> list[int]:
    """Each width rounded up to a multiple of ``multiple``."""
    m = max(1, int(multiple))
    return [int(-(-int(w) // m) * m) for w in widths]


def pad_widths(model: nn.Module, multiple: int) -> nn.Module:
    """A copy of a pruned ResNet (a registered backbone with ``config['widths']`` and
    ``blocks``) whose inner widths are padded up to ``multiple`` with channels that are
    always 0; ``model`` itself when nothing would change. Eval mode."""
    config = dict(getattr(model, "config", {}))
    if "widths" not in config or "arch" not in config or not hasattr(model, "blocks"):
        raise ValueError("pad_widths needs a registered ResNet with config['widths'] (CIFAR ResNets, "
                         "ResNet-18/34)")
    widths = [int(w) for w in config["widths"]]
    new_widths = padded(widths, multiple)
    if new_widths == widths:
        return model
    kwargs = {k: v for k, v in config.items() if k not in ("arch", "widths")}
    twin = create_model(config["arch"], widths=new_widths, **kwargs).eval()
    plan = channel_plan(model)
    src = model.state_dict()
    state = twin.state_dict()
    for key, dst in state.items():
        old = src[key]
        if key not in plan:
            state[key] = old.detach().clone()
            continue
        # zeros everywhere (weights, BN scale/shift/mean) except a running variance of 1, so
        # a padded channel's BN output is exactly 0 and the next conv reads it with weight 0
        new = torch.ones_like(dst) if key.endswith("running_var") else torch.zeros_like(dst)
        new[tuple(slice(0, n) for n in old.shape)] = old
        state[key] = new
    twin.load_state_dict(state)
    if hasattr(model, "manifest"):
        twin.manifest = model.manifest
    if hasattr(model, "input_spec"):
        twin.input_spec = model.input_spec
    return twin


def interleaved_times(fns: dict, rounds: int, calls: int, threads: int = 1,
                      progress=None) -> dict[str, dict]:
    """Per-round fastest call (ms) of each function on two clocks: ``wall`` (perf_counter) and
    ``cpu`` (CPU time of this thread with one torch thread, of the process otherwise). One
    warm-up call each, then ``rounds`` rounds calling every function ``calls`` times in
    alternating order (as :func:`models.flops.interleaved_timings`). On a CPU shared with other
    busy processes the wall clock also counts the time the OS gave them; the CPU clock counts
    only this work (still slowed by shared caches), so its ratios survive a loaded machine."""
    cpu_clock = time.thread_time if threads <= 1 else time.process_time
    for f in fns.values():
        f()
    out = {n: {"wall": [], "cpu": []} for n in fns}
    names = list(fns)
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            wall = cpu = float("inf")
            for _ in range(calls):
                c0, t0 = cpu_clock(), time.perf_counter()
                fns[n]()
                t1, c1 = time.perf_counter(), cpu_clock()
                wall, cpu = min(wall, t1 - t0), min(cpu, c1 - c0)
            out[n]["wall"].append(1000 * wall)
            out[n]["cpu"].append(1000 * cpu)
        if progress:
            progress()
    return out


def deployed_form(model: nn.Module, multiple: int, input_size: tuple[int, int]) -> nn.Module:
    """Padded to ``multiple`` (when it is a prunable ResNet), BN folded, channels-last."""
    if multiple > 1:
        model = pad_widths(model, multiple)
    return optimize_for_cpu(model, input_size=tuple(input_size))


def _inputs(model: nn.Module, batch: int, size: tuple[int, int]) -> torch.Tensor:
    c = int(getattr(model, "config", {}).get("in_chans", 3))
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, c, *size, generator=g).contiguous(memory_format=torch.channels_last)


def deploy_pruned(model: nn.Module, input_size: tuple[int, int] = (32, 32),
                  batches: Sequence[int] = (1, 32), threads: int = 1, rounds: int = 5,
                  candidates: Sequence[int] = CANDIDATES, atol: float = 1e-4,
                  clock: str = "cpu") -> tuple[nn.Module, dict]:
    """Choose the padding multiple of ``model``'s deployed form by timing each candidate here;
    returns (deployed model, the ``deploy`` record). The deployed model's outputs are checked
    against ``model.eval()`` (allclose, relative to the output's scale) on a probe batch; a
    candidate that fails the check is dropped (``m = 1`` never is: it is the plain deployed
    form of :func:`models.deploy.optimize_for_cpu`, which checks itself). ``clock``: ``cpu``
    (default; robust on a shared machine) or ``wall`` (see :func:`interleaved_times`)."""
    model = model.eval()
    size = tuple(int(v) for v in input_size)
    widths = [int(w) for w in getattr(model, "config", {}).get("widths", [])]
    forms: dict[int, nn.Module] = {}
    probe = _inputs(model, 3, size).contiguous()
    with torch.no_grad():
        ref = model(probe)
    for m in dict.fromkeys(int(c) for c in candidates):
        if m > 1 and (not widths or padded(widths, m) == widths
                      or any(padded(widths, m) == padded(widths, k) for k in forms)):
            continue  # nothing new to measure
        try:
            form = deployed_form(model, m, size)
        except ValueError:
            continue
        with torch.no_grad():
            got = form(probe.contiguous(memory_format=torch.channels_last))
        if m == 1 or torch.allclose(got, ref, atol=atol * max(1.0, float(ref.abs().max())), rtol=1e-4):
            forms[m] = form
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times: dict[int, dict[int, float]] = {m: {} for m in forms}
        with torch.inference_mode():
            for b in batches:
                x = _inputs(model, b, size)
                calls = 5 if b <= 4 else 2
                t = interleaved_times({m: (lambda f=f, x=x: f(x)) for m, f in forms.items()}, rounds, calls,
                                      threads)
                for m in forms:
                    times[m][int(b)] = round(min(t[m][clock]), 4)
    finally:
        torch.set_num_threads(old)

    def score(m: int) -> float:  # geometric mean of the times relative to the unpadded form
        return math.exp(sum(math.log(times[m][b] / times[1][b]) for b in times[m]) / len(times[m]))

    best = min(forms, key=lambda m: (score(m), m))
    record = {
        "pad_multiple": best, "widths": widths, "deployed_widths": padded(widths, best) if widths else [],
        "bn_folded": True, "channels_last": True,
        "candidates_ms": {str(m): {str(b): v for b, v in times[m].items()} for m in forms},
        "relative_time": {str(m): round(score(m), 4) for m in forms},
        "threads": threads, "input_size": list(size), "clock": clock,
        "rule": "fastest geometric mean over the batches of interleaved min times; padding only "
                "where it measured faster",
    }
    return forms[best], record


def deploy_recorded(model: nn.Module) -> nn.Module:
    """The deployed form of a loaded artifact as its manifest's ``deploy`` record says (padding
    multiple; 1 without a record): padded, BN folded, channels-last."""
    record = (getattr(model, "manifest", None) or {}).get("deploy") or {}
    size = tuple((getattr(model, "input_spec", None) or {}).get("size", (32, 32)))
    return deployed_form(model, int(record.get("pad_multiple", 1)), size)


def load_deployed(path: str | Path) -> nn.Module:
    """Load an artifact (:func:`models.artifacts.load_artifact`) in its recorded deployed form;
    feed it channels-last input."""
    # deferred: artifacts imports the method families' runtimes (heavy; not needed to pad)
    from vistream.models.artifacts import load_artifact

    return deploy_recorded(load_artifact(path))


def export_deployed(artifact: str | Path, out: str | Path, **kwargs) -> dict:
    """Measure the deployed form of a pruned artifact here (:func:`deploy_pruned`) and write a
    copy of it whose manifest carries the ``deploy`` record. Returns the manifest."""
    # deferred: artifacts imports the method families' runtimes (heavy; not needed to pad)
    from vistream.models.artifacts import export_artifact, load_artifact

    model = load_artifact(artifact)
    size = tuple(model.input_spec["size"])
    _, record = deploy_pruned(model, size, **kwargs)
    man = copy.deepcopy(model.manifest)
    extra = {k: man[k] for k in ("metrics",) if k in man}
    return export_artifact(model, out, method=man.get("method", "baseline"), input_spec=man["input_spec"],
                           normalization=man.get("normalization"), metrics=extra.get("metrics"),
                           extra={"deploy": record}, onnx=False)
