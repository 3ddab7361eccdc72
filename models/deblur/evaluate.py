"""Evaluation of S3E-Deblur against the blurred input, non-blind classical deconvolution
(scikit-image Richardson-Lucy and Wiener, given the true kernel) and the no-semantics
ablation; captioning BLEU-4 on blurred vs deblurred input; a PNG grid of examples.

Fairness notes: the classical methods get the *true* kernel (they are non-blind, the models
are blind), a reflect-padded input (so their circular/zero borders do not cost them) and their
one parameter (Wiener ``balance``, RL iterations) tuned per blur level on training pairs,
never on the held-out sets. Both networks are trained with the same steps, batch and seed.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.deblur import SHIPPED_WEIGHTS
from vistream.models.data.blur import (EVAL_SETS, Sample, decode_caption, eval_set, gopro_pairs, load_pair,
                                       make_sample, object_maps)
from vistream.models.stats import paired_differences

WIENER_BALANCES = (0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0)
RL_ITERATIONS = (3, 5, 10, 20, 30, 50)


# --------------------------------------------------------------------------- classical


def _padded(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray, pad: int) -> np.ndarray:
    p = np.pad(img, ((pad, pad), (pad, pad)), mode="reflect")
    return fn(p)[pad:-pad, pad:-pad]


def wiener(blurred: np.ndarray, kernel: np.ndarray, balance: float) -> np.ndarray:
    """skimage Wiener deconvolution per channel, with the true kernel."""
    from skimage.restoration import wiener as sk_wiener

    pad = kernel.shape[0]
    out = np.stack([_padded(lambda c: sk_wiener(c, kernel, balance, clip=False), blurred[..., i], pad)
                    for i in range(blurred.shape[-1])], -1)
    return np.clip(out, 0, 1).astype(np.float32)


def richardson_lucy(blurred: np.ndarray, kernel: np.ndarray, iterations: int) -> np.ndarray:
    """skimage Richardson-Lucy per channel, with the true kernel."""
    from skimage.restoration import richardson_lucy as sk_rl

    pad = kernel.shape[0]
    out = np.stack([_padded(lambda c: sk_rl(c, kernel, num_iter=iterations, clip=False),
                            blurred[..., i], pad) for i in range(blurred.shape[-1])], -1)
    return np.clip(out, 0, 1).astype(np.float32)


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def object_region(sample: Sample, margin: float = 2.0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels the caption speaks about: a disc of radius ``r +
    margin`` around every composited object (each shape is drawn inside its radius ``r``; the
    margin keeps the edges that blur smears outwards)."""
    h, w = sample.sharp.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    for o in sample.objects:
        mask |= np.hypot(xx - o.cx, yy - o.cy) <= o.r + margin
    return mask


def masked_psnr(ref: np.ndarray, img: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (data range 1) over the pixels of ``mask`` only."""
    if not mask.any():
        raise ValueError("empty mask")
    mse = float(np.mean((ref[mask].astype(np.float64) - img[mask].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, img, data_range=1.0, channel_axis=-1))


def tune_classical(level: str, n: int = 6) -> dict[str, float]:
    """Best Wiener balance and RL iteration count (mean PSNR) on ``n`` *training* pairs of the
    blur ``level`` (training photos, whichever set is scored)."""
    pairs = [make_sample(123_456 + i, level) for i in range(n)]
    best_b = max(WIENER_BALANCES, key=lambda b: np.mean(
        [psnr(s.sharp, wiener(s.blurred, s.kernel, b)) for s in pairs]))
    best_i = max(RL_ITERATIONS, key=lambda it: np.mean(
        [psnr(s.sharp, richardson_lucy(s.blurred, s.kernel, it)) for s in pairs]))
    return {"wiener_balance": float(best_b), "rl_iterations": int(best_i)}


# --------------------------------------------------------------------------- BLEU


def bleu4(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al.), one reference per hypothesis, uniform weights,
    brevity penalty; add-one smoothing of the n-gram precisions for n > 1 so that a short
    corpus does not collapse to zero."""
    match = [0] * 4
    total = [0] * 4
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_len += len(ref)
        hyp_len += len(hyp)
        for n in range(1, 5):
            h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            match[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or match[0] == 0:
        return 0.0
    logp = math.log(match[0] / total[0])
    for n in range(1, 4):
        logp += math.log((match[n] + 1) / (total[n] + 1))
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return float(bp * math.exp(logp / 4))


# --------------------------------------------------------------------------- models


def _in_batches(fn, images: list[np.ndarray], batch: int) -> tuple[list[np.ndarray], list[list[str]]]:
    """``fn`` (NCHW tensor -> deblurred, caption tokens or None) over float RGB HWC images,
    in batches of consecutive images of equal size (GoPro folders may mix sizes)."""
    import torch

    outs: list[np.ndarray] = []
    caps: list[list[str]] = []
    i = 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch and images[j].shape == images[i].shape:
            j += 1
        x = torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in images[i:j]])).float()
        y, toks = fn(x)
        outs += [a.transpose(1, 2, 0).copy() for a in y.numpy()]
        caps += [decode_caption(t) for t in toks.numpy()] if toks is not None else [[] for _ in range(j - i)]
        i = j
    return outs, caps


def run_model(model, images: list[np.ndarray], batch: int = 16,
              mirror: bool = False) -> tuple[list[np.ndarray], list[list[str]]]:
    """Deblur float RGB HWC images (``mirror``: the two-view self-ensemble of
    :meth:`S3EDeblur.deblur`); returns images and captions."""
    return _in_batches(lambda x: model.deblur(x, caption=True, mirror=mirror), images, batch)


def run_with_other_trees(model, images: list[np.ndarray], batch: int = 16) -> list[np.ndarray]:
    """:func:`run_model`, but every image deblurred under the tree of the next image of its
    batch (:meth:`S3EDeblur.deblur_with_other_trees`)."""
    return _in_batches(lambda x: (model.deblur_with_other_trees(x), None), images, batch)[0]


def attention_on_objects(model, samples: list[Sample], batch: int = 32) -> dict[str, float]:
    """Where the tree's spatial features point: the share of each object node's attention map
    (captioner reading the blurred image, teacher-forced with the true caption) that falls on
    the grid cells its object covers, against the share a uniform map would put there."""
    # torch and s3e (which imports torch) only here: the metrics above stay numpy-only
    import torch

    from vistream.models.deblur.s3e import tree_masks

    on, chance = [], []
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        x = torch.from_numpy(np.stack([s.blurred.transpose(2, 0, 1) for s in part])).float()
        toks = torch.from_numpy(np.stack([s.tokens for s in part])).long()
        with torch.no_grad():
            _, _, alphas = model.captioner(x, toks)
            maps = (tree_masks(toks)["obj"] @ alphas).numpy()
        for s, m in zip(part, maps):
            cells = object_maps(s.objects, s.sharp.shape[1], s.sharp.shape[0]) > 0
            for j in range(min(len(s.objects), len(cells))):
                on.append(float(m[j][cells[j]].sum()))
                chance.append(float(cells[j].mean()))
    return {"share_on_own_object": round(float(np.mean(on)), 4),
            "uniform_map_share": round(float(np.mean(chance)), 4)}


def captions_of(model, images: list[np.ndarray], batch: int = 32) -> list[list[str]]:
    import torch

    out: list[list[str]] = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in images[i:i + batch]])).float()
        toks, _, _ = model.captioner.greedy(x)
        out += [decode_caption(t) for t in toks.numpy()]
    return out


def _table(sharp: list[np.ndarray], results: dict[str, list[np.ndarray]],
           regions: list[np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    table = {name: {"psnr": round(float(np.mean([psnr(s, o) for s, o in zip(sharp, outs)])), 3),
                    "ssim": round(float(np.mean([ssim(s, o) for s, o in zip(sharp, outs)])), 4)}
             for name, outs in results.items()}
    if regions is not None:  # where the caption speaks: does the semantic embedding help there?
        for name, outs in results.items():
            table[name]["psnr_objects"] = round(float(np.mean(
                [masked_psnr(s, o, m) for s, o, m in zip(sharp, outs, regions) if m.any()])), 3)
    return table


def paired_gain(sharp: list[np.ndarray], a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """PSNR of ``a`` minus PSNR of ``b`` scene by scene: the mean, its standard error (the
    spread of the differences over sqrt(n)) and the share of scenes on which ``a`` is ahead.
    Both run on the very same blurred scenes, so the pairing removes the scenes' own spread:
    a mean gain within about two standard errors of zero could be the draw of scenes."""
    g = paired_differences([psnr(s, x) - psnr(s, y) for s, x, y in zip(sharp, a, b)])
    return {"mean_db": round(g["mean"], 3), "se_db": float("nan") if g["se"] is None else round(g["se"], 3),
            "share_of_scenes_ahead": round(g["ahead"] / g["n"], 3)}


def evaluate_synthetic(models: dict[str, Any], n: int = 100, levels: Sequence[str] = tuple(EVAL_SETS),
                       tune_pairs: int = 6, progress: bool = True,
                       mirror: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per evaluation set (``data.EVAL_SETS``: blur level and photos) and the images
    for a grid. ``models`` maps name -> S3EDeblur (``s3e`` is the one whose captioner is
    scored for BLEU); ``mirror`` runs every model as its two-view self-ensemble."""
    from tqdm import tqdm

    report: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    for level in levels:
        samples: list[Sample] = eval_set(level, n)
        sharp = [s.sharp for s in samples]
        blurred = [s.blurred for s in samples]
        params = tune_classical(EVAL_SETS[level][0], tune_pairs)
        results: dict[str, list[np.ndarray]] = {"blurred": blurred}
        it = tqdm(samples, desc=f"classical {level}", disable=not progress)
        results["wiener_true_kernel"] = [wiener(s.blurred, s.kernel, params["wiener_balance"]) for s in it]
        results["richardson_lucy_true_kernel"] = [
            richardson_lucy(s.blurred, s.kernel, params["rl_iterations"]) for s in samples]
        caps: dict[str, list[list[str]]] = {}
        for name, model in models.items():
            results[name], caps[name] = run_model(model, blurred, mirror=mirror)
        regions = [object_region(s) for s in samples]
        level_rep: dict[str, Any] = {"n": n, "classical_params": params, "mirror_ensemble": mirror,
                                     "methods": _table(sharp, results, regions)}
        if "s3e" in models:
            m = models["s3e"]
            refs = [s.caption for s in samples]
            level_rep["bleu4"] = {
                "caption_of_blurred": round(bleu4(refs, captions_of(m, blurred)), 4),
                "caption_of_s3e_deblurred": round(bleu4(refs, captions_of(m, results["s3e"])), 4),
                "caption_of_sharp": round(bleu4(refs, captions_of(m, sharp)), 4),
            }
            level_rep["attention_on_objects"] = attention_on_objects(m, samples)
            if "ablation_no_semantic" in results:  # the semantic target, with its uncertainty
                level_rep["semantic_gain_per_scene"] = paired_gain(sharp, results["s3e"],
                                                                   results["ablation_no_semantic"])
            if m.cfg.semantic:
                # the same generator under other scenes' trees: the part of its result owed to
                # what the caption says about *this* scene, not to a tree being present
                own = run_model(m, blurred)[0] if mirror else results["s3e"]  # one view, as "other"
                swapped = _table(sharp, {"own": own, "other": run_with_other_trees(m, blurred)}, regions)
                level_rep["tree_content"] = {
                    "psnr_own_trees": swapped["own"]["psnr"],
                    "psnr_other_scenes_trees": swapped["other"]["psnr"],
                    "gain_db": round(swapped["own"]["psnr"] - swapped["other"]["psnr"], 3),
                    "gain_in_object_regions_db": round(
                        swapped["own"]["psnr_objects"] - swapped["other"]["psnr_objects"], 3)}
            level_rep["example_captions"] = [
                {"truth": " ".join(s.caption), "predicted_from_blurred": " ".join(c)}
                for s, c in zip(samples[:3], caps["s3e"])]
        report[level] = level_rep
        examples[level] = {"sharp": sharp[:4], **{k: v[:4] for k, v in results.items()}}
    return report, examples


def evaluate_pairs(models: dict[str, Any], root: Path, max_side: int | None = 320,
                   limit: int | None = None, mirror: bool = False) -> dict[str, Any]:
    """PSNR/SSIM on a GoPro-layout folder (no kernels: classical non-blind methods and BLEU
    do not apply)."""
    pairs = gopro_pairs(root)[:limit]
    loaded = [load_pair(b, s, max_side) for b, s in pairs]
    sharp = [p[1] for p in loaded]
    results = {"blurred": [p[0] for p in loaded]}
    for name, model in models.items():
        results[name] = run_model(model, results["blurred"], batch=4, mirror=mirror)[0]
    return {"n": len(pairs), "root": str(root), "max_side": max_side, "mirror_ensemble": mirror,
            "methods": _table(sharp, results)}


def save_grid(examples: dict[str, Any], path: Path) -> Path:
    """Rows = examples (per level, under a label row); columns = sharp, blurred, Wiener, RL,
    ablation, S3E (whatever ``examples`` holds, in its order)."""
    import cv2

    def u8(im: np.ndarray) -> np.ndarray:
        im = (np.clip(im, 0, 1)[..., ::-1] * 255).round().astype(np.uint8)
        return np.pad(im, ((2, 2), (2, 2), (0, 0)), constant_values=255)

    rows = []
    for level, ex in examples.items():
        cols = ["sharp"] + [k for k in ex if k != "sharp"]
        cells = [np.concatenate([u8(ex[c][i]) for c in cols], 1) for i in range(len(ex["sharp"]))]
        header = np.full((14, cells[0].shape[1], 3), 255, np.uint8)
        w = cells[0].shape[1] // len(cols)
        short = {"wiener_true_kernel": "wiener", "richardson_lucy_true_kernel": "RL",
                 "ablation_no_semantic": "ablation"}
        for j, c in enumerate(cols):
            tag = {"severe-unseen": "new"}.get(level, level[:3])  # photos training never saw
            cv2.putText(header, f"{tag} {short.get(c, c)}", (j * w + 2, 11),
                        cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [header] + cells
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


# --------------------------------------------------------------------------- the whole run


def load_model(path: Path | None, which: str, semantic: bool):
    """The model in ``path`` (exported weights or a training checkpoint ``.pt``), or the
    shipped weights ``which`` (a key of ``SHIPPED_WEIGHTS``) when ``path`` is None; its
    semantic switch set to ``semantic``. Raises FileNotFoundError when the file is missing."""
    # s3e and train import torch: only loading a model needs it
    from vistream.models.deblur.s3e import load_weights
    from vistream.models.deblur.train import model_from_checkpoint

    p = path or SHIPPED_WEIGHTS[which]
    if not p.exists():
        raise FileNotFoundError(f"weights file {p} not found (train with `vistream train deblur "
                                f"--export`)")
    if p.suffix == ".pt":
        return model_from_checkpoint(p, semantic=semantic)
    model, _ = load_weights(p)
    model.cfg.semantic = semantic
    return model


def quality_targets(methods: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The issue's quality targets read from one severe set's table of methods."""
    s3e = methods["s3e"]
    gain = s3e["psnr"] - methods["blurred"]["psnr"]
    semantic_gain = s3e["psnr"] - methods["ablation_no_semantic"]["psnr"]
    return {
        "severe_gain_over_input_db": round(gain, 3),
        "gain_3db_met": gain >= 3.0,
        "above_rl_and_wiener": s3e["psnr"] > max(methods["wiener_true_kernel"]["psnr"],
                                                 methods["richardson_lucy_true_kernel"]["psnr"]),
        "semantic_gain_db": round(semantic_gain, 3),
        "semantic_gain_0.3db_met": semantic_gain >= 0.3,
        "semantic_gain_in_object_regions_db": round(
            s3e["psnr_objects"] - methods["ablation_no_semantic"]["psnr_objects"], 3),
    }


def _echo_level(level: str, rep: dict[str, Any], echo: Callable[[str], None]) -> None:
    echo(f"\n{level} ({rep['n']} held-out scenes, classical params {rep['classical_params']})")
    for name, m in rep["methods"].items():
        echo(f"  {name:30s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  "
             f"object regions PSNR {m['psnr_objects']:6.2f} dB")
    echo(f"  BLEU-4: {rep['bleu4']}")
    if "attention_on_objects" in rep:
        echo(f"  object nodes' attention: {rep['attention_on_objects']}")
    if "semantic_gain_per_scene" in rep:
        g = rep["semantic_gain_per_scene"]
        ahead = 100 * g["share_of_scenes_ahead"]
        echo(f"  S3E - ablation, scene by scene: {g['mean_db']:+.3f} dB, standard error "
             f"{g['se_db']:.3f}, S3E ahead on {ahead:.0f}% of scenes")
    if "tree_content" in rep:
        echo(f"  S3E under other scenes' trees: {rep['tree_content']}")


def run_evaluation(models: dict[str, Any], out: Path, pairs: Path | None = None, n: int = 100,
                   levels: Sequence[str] = tuple(EVAL_SETS), max_side: int = 320,
                   limit: int | None = None, mirror: bool = False, progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``vistream eval deblur``: the held-out sets ``levels`` (``n`` scenes each) or the GoPro
    folder ``pairs`` (at most ``limit`` pairs); writes results.json (and the example grid) to
    ``out``, echoes the tables and returns the figures of the last line."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if pairs is not None:
        report: dict[str, Any] = {"pairs": evaluate_pairs(models, pairs, max_side, limit=limit,
                                                          mirror=mirror)}
    else:
        report, examples = evaluate_synthetic(models, n=n, levels=levels, progress=progress,
                                              mirror=mirror)
        report["grid"] = str(save_grid(examples, out / "examples.png"))
        targets = report["targets"] = quality_targets(report["severe"]["methods"])
        if "semantic_gain_per_scene" in report["severe"]:
            targets["semantic_gain_se_db"] = report["severe"]["semantic_gain_per_scene"]["se_db"]
        if "tree_content" in report["severe"]:
            targets["tree_content_gain_db"] = report["severe"]["tree_content"]["gain_db"]
        if "severe-unseen" in report:  # the same targets where the photos cannot be remembered
            targets["unseen_photos"] = quality_targets(report["severe-unseen"]["methods"])
        for level in levels:
            _echo_level(level, report[level], echo)
    report["seconds"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    echo(f"\nwrote {out / 'results.json'}")
    return {"eval": "deblur", **({"targets": report["targets"]} if "targets" in report
                                 else {"pairs": report["pairs"]["methods"]})}
