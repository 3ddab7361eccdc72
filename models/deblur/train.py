"""Training of S3E-Deblur (:mod:`models.deblur.s3e`): its losses, the co-training loop with the
ablation beside it in lockstep, checkpoints, and the network of a checkpoint.

* **Losses** - content (Charbonnier on pixels), feature consistency (L1 between the captioner
  encoder's features of the deblurred and the sharp image; gradients reach only the
  generator), adversarial (WGAN-GP with :class:`~models.deblur.s3e.Critic`), captioning
  cross-entropy on the blurred and the sharp image, and the optional grounding of the object
  nodes' attention; weights in :class:`LossWeights`.
* **Loop** - :func:`train`: Adam, cosine learning rate, batches that are a pure function of
  (seed, step) (:class:`TrainingBatches`), a checkpoint every ``checkpoint_every`` steps,
  resumable; with ``ablation_dir`` the ablation trains beside S3E on the same batches.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vistream.models.data.blur import PAD, TRAINING_POOLS, training_batch
from vistream.models.deblur.s3e import (Captioner, Critic, S3EConfig, S3EDeblur, export_weights, load_weights,
                                       tree_masks)


# --------------------------------------------------------------------------- losses


def content_loss(out: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((out - sharp) ** 2 + 1e-6).mean()  # Charbonnier


def feature_consistency_loss(captioner: Captioner, out: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """L1 between encoder features of the deblurred and the sharp image. The encoder's
    parameters are detached here so only the generator is pushed by this term."""
    params = {k: v.detach() for k, v in captioner.encoder.named_parameters()}
    f_out = torch.func.functional_call(captioner.encoder, params, (Captioner.prepare(out),))
    with torch.no_grad():
        f_ref = captioner.encoder(Captioner.prepare(sharp))
    return (f_out - f_ref).abs().mean()


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), ignore_index=PAD)


def grounding_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each object node's attention map (B, K, N; rows sum to 1) against the
    grid cells its object covers (``object_maps``: rows sum to 1, all-zero for absent objects)."""
    present = targets.sum(-1) > 0
    if not bool(present.any()):
        return maps.sum() * 0
    ce = -(targets * torch.log(maps.clamp(min=1e-8))).sum(-1)
    return ce[present].mean()


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclass
class LossWeights:
    content: float = 1.0
    feature: float = 0.05
    adversarial: float = 0.0005
    caption: float = 0.1
    grounding: float = 0.0
    gp: float = 10.0


def generator_losses(model: S3EDeblur, critic: Critic, blurred, sharp, tokens,
                     w: LossWeights, masks=None, object_maps=None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(total, terms, deblurred) for the generator/captioner step. ``object_maps`` (B, K, N),
    the grid cells of each captioned object, enable the grounding term when ``w.grounding``."""
    out, logits, sharp_logits, maps = model.training_pass(blurred, sharp, tokens, masks)
    terms = {
        "content": content_loss(out, sharp),
        "feature": feature_consistency_loss(model.captioner, out, sharp),
        # the critic sees the displayed (clamped) image: a WGAN critic is unbounded in its input,
        # and without the clamp the generator can run away towards huge values to please it
        "adversarial": -critic(out.clamp(0, 1)).mean(),
        "caption_blurred": caption_loss(logits, tokens),
        "caption_sharp": caption_loss(sharp_logits, tokens),
    }
    total = (w.content * terms["content"] + w.feature * terms["feature"]
             + w.adversarial * terms["adversarial"]
             + w.caption * (terms["caption_blurred"] + terms["caption_sharp"]))
    if w.grounding and object_maps is not None:
        terms["grounding"] = grounding_loss(maps, object_maps)
        total = total + w.grounding * terms["grounding"]
    return total, terms, out


def critic_loss(critic: Critic, real, fake, w: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    fake = fake.clamp(0, 1)
    wd = critic(fake).mean() - critic(real).mean()
    gp = gradient_penalty(critic, real, fake)
    return wd + w.gp * gp, {"wasserstein": wd, "gp": gp}


# --------------------------------------------------------------------------- training


@dataclass
class DeblurTrainConfig:
    """How :func:`train` co-trains S3E-Deblur (and, beside it, its ablation)."""


    steps: int = 1300
    batch: int = 8
    size: int = 96
    lr: float = 1e-3
    critic_lr: float = 1e-4
    seed: int = 0
    semantic: bool = True
    checkpoint_every: int = 200
    threads: int = 1
    severe_fraction: float = 0.7
    device: str = "cpu"
    workers: int = 0          # data-loader processes (0: batches are made in the training loop)
    c1: int = S3EConfig.c1    # generator size (S3EConfig): channels at 1/2 and 1/4 resolution,
    c2: int = S3EConfig.c2    # residual blocks at the bottleneck
    blocks: int = S3EConfig.blocks
    c3: int = S3EConfig.c3            # optional 1/8 level: channels and residual blocks
    blocks8: int = S3EConfig.blocks8
    paint_half: bool = False  # S3EConfig.paint_half
    grounding: float = 0.0    # weight of the object nodes' attention grounding (LossWeights)
    augment: bool = True      # random flips / transposition of the photo crops (data.make_scene)
    photos: str = "wide"      # training photo pool, a key of data.TRAINING_POOLS
    init: str = ""            # exported weights to start S3E from (fine-tuning; fresh optimiser)
    ablation_init: str = ""   # the same for the ablation of a lockstep pair

    def model_config(self, semantic: bool) -> S3EConfig:
        return S3EConfig(c1=self.c1, c2=self.c2, blocks=self.blocks, c3=self.c3,
                         blocks8=self.blocks8, semantic=semantic, paint_half=self.paint_half)


class TrainingBatches(torch.utils.data.Dataset):
    """Batch ``k`` of a run is a pure function of (seed, k): resuming, or training the
    ablation beside S3E, sees exactly the same scenes. Items are whole batches (tensors plus
    the S3-tree masks of the true captions, parsed here on the CPU)."""

    def __init__(self, cfg: DeblurTrainConfig) -> None:
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        c = self.cfg
        b = training_batch(np.random.default_rng([c.seed, step]), c.batch, c.size, c.severe_fraction,
                           c.augment, TRAINING_POOLS[c.photos])
        tokens = torch.from_numpy(b["tokens"])
        return {"blurred": torch.from_numpy(b["blurred"]), "sharp": torch.from_numpy(b["sharp"]),
                "tokens": tokens, "masks": tree_masks(tokens),
                "object_maps": torch.from_numpy(b["object_maps"])}


def _quiet_worker(_: int) -> None:
    # each loader process makes whole batches; OpenCV's own thread pool would only fight the
    # other loaders (torch already runs its workers on one thread)
    cv2.setNumThreads(1)


_SIZE_FIELDS = ("c1", "c2", "blocks", "c3", "blocks8")
_GENERATOR_FIELDS = (*_SIZE_FIELDS, "paint_half")


def generator_sizes(spec: str) -> dict[str, int]:
    """``"C1,C2,BLOCKS"`` or ``"C1,C2,BLOCKS,C3,BLOCKS8"`` (a 1/8 level) as DeblurTrainConfig fields;
    ValueError for anything else (not integers, another count, a size below 1)."""
    try:
        sizes = [int(v) for v in spec.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) not in (3, 5) or min(sizes) < 1:
        raise ValueError(f"{spec!r}: expected three positive integers C1,C2,BLOCKS such as 32,48,3, "
                         "or five with a 1/8 level, C1,C2,BLOCKS,C3,BLOCKS8 such as 32,48,2,96,4")
    return dict(zip(_SIZE_FIELDS, sizes + [0, 0]))


def _saved_generator(run_config: dict) -> dict[str, int]:
    """The generator size in a run's config.json (runs older than the setting: the default)."""
    return {k: run_config.get(k, getattr(S3EConfig, k)) for k in _GENERATOR_FIELDS}


def _check_same_generator(config_path: Path, cfg: DeblurTrainConfig) -> None:
    """A checkpoint resumes only into a generator of its own size: a mismatch would otherwise
    surface as a wall of missing/unexpected state-dict keys."""
    if not config_path.exists():
        return
    theirs = _saved_generator(json.loads(config_path.read_text()))
    ours = {k: getattr(cfg, k) for k in _GENERATOR_FIELDS}
    if theirs != ours:
        raise ValueError(f"{config_path.parent} holds a generator of size {theirs}, not {ours}: "
                         "resume with the same generator size, or train afresh in another folder")


class _Run:
    """One network being trained (model, critic, optimisers, history) and its checkpoint."""

    TERMS = ("content", "feature", "adversarial", "caption_blurred", "wasserstein")

    def __init__(self, cfg: DeblurTrainConfig, semantic: bool, out_dir: Path, resume: bool, log) -> None:
        torch.manual_seed(cfg.seed)  # both runs of a pair start from the same weights
        self.semantic, self.out_dir, self.cfg = semantic, out_dir, cfg
        self.model = S3EDeblur(cfg.model_config(semantic)).to(cfg.device)
        self.critic = Critic().to(cfg.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.copt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.9))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.terms = self.TERMS + (("grounding",) if cfg.grounding else ())
        self.run = {k: 0.0 for k in self.terms}
        out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = out_dir / "checkpoint.pt"
        if resume and self.ckpt.exists():
            _check_same_generator(out_dir / "config.json", cfg)
            state = torch.load(self.ckpt, map_location=cfg.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.critic.load_state_dict(state["critic"])
            self.opt.load_state_dict(state["opt"])
            self.copt.load_state_dict(state["copt"])
            self.step = int(state["step"])
            self.history = json.loads(state["history"])
            if self.history:  # the smoothed losses go on from where they were
                self.run = {k: float(self.history[-1].get(k, 0.0)) for k in self.terms}
            log(f"resumed from {self.ckpt} at step {self.step}")
        elif init := (cfg.init if semantic else cfg.ablation_init):
            start, _ = load_weights(init)
            theirs = {k: getattr(start.cfg, k) for k in _SIZE_FIELDS}
            ours = {k: getattr(cfg, k) for k in _SIZE_FIELDS}
            # growing is allowed: a 1/8 level the start lacks is added (at zero, see Generator)
            grows = start.cfg.c3 == 0 and cfg.c3 > 0 and cfg.blocks8 > 0
            compared = ("c1", "c2", "blocks") if grows else _SIZE_FIELDS
            if any(theirs[k] != ours[k] for k in compared) or (start.cfg.paint_half and not cfg.paint_half):
                raise ValueError(f"{init} holds a generator of size {theirs}"
                                 f"{' with paint_half' if start.cfg.paint_half else ''}, not {ours}: "
                                 "start from weights of the generator size being trained (or of "
                                 "the same size without the 1/8 level, which is then added)")
            if start.cfg.semantic != semantic:
                kind = "S3E" if start.cfg.semantic else "ablation"
                raise ValueError(f"{init} holds {kind} weights: start "
                                 f"{'S3E' if semantic else 'the ablation'} from its own kind")
            # a 1/2-resolution paint or a 1/8 level the start lacks keeps its zero initialisation
            missing, _ = self.model.load_state_dict(start.state_dict(), strict=False)
            assert all(k.startswith(("generator.paint_half.", "generator.deep.")) for k in missing), missing
            log(f"{'S3E' if semantic else 'ablation'} starts from {init}"
                f"{' (1/8 level added)' if grows else ''}")
        self.write_config()

    def write_config(self) -> None:
        (self.out_dir / "config.json").write_text(json.dumps(asdict(self.cfg) | {"semantic": self.semantic},
                                                             indent=2))

    def train_step(self, batch: dict[str, Any], lr: float, w: LossWeights) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        total, terms, out = generator_losses(self.model, self.critic, batch["blurred"], batch["sharp"],
                                             batch["tokens"], w, batch["masks"], batch["object_maps"])
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        closs, cterms = critic_loss(self.critic, batch["sharp"], out.detach(), w)
        self.copt.zero_grad(set_to_none=True)
        closs.backward()
        self.copt.step()
        self.step += 1
        # smoothed losses are read back every 20 steps only: a read is a device sync
        if self.step == 1 or self.step % 20 == 0:
            for k in self.run:
                v = float((terms | cterms)[k].detach())
                self.run[k] = v if self.step == 1 else 0.7 * self.run[k] + 0.3 * v

    def record(self, seconds: float) -> None:
        self.history.append({"step": self.step, **{k: round(v, 5) for k, v in self.run.items()},
                             "seconds": round(seconds, 1)})

    def save(self) -> None:
        tmp = self.out_dir / "checkpoint.tmp"
        torch.save({"model": self.model.state_dict(), "critic": self.critic.state_dict(),
                    "opt": self.opt.state_dict(), "copt": self.copt.state_dict(), "step": self.step,
                    "steps": self.cfg.steps, "history": json.dumps(self.history)}, tmp)
        tmp.replace(self.ckpt)


def train(cfg: DeblurTrainConfig, out_dir: Path, resume: bool = True, progress: bool = True,
          max_seconds: float | None = None, log=print, ablation_dir: Path | None = None,
          fit_schedule: bool = False) -> dict[str, Any]:
    """Co-train captioner, tree and generator (and the critic); checkpoints in ``out_dir``.

    Resumes from ``out_dir/checkpoint.pt`` when present (and ``resume``). With
    ``ablation_dir`` the ablation (zero tree embedding) is trained beside it in lockstep: same
    initial weights, same batches, same schedule - the comparison the evaluation needs.
    ``fit_schedule`` (with ``max_seconds``) measures the speed over the first steps and
    shortens ``cfg.steps`` so the cosine schedule ends inside the time budget instead of
    being cut off at a high learning rate. Returns a summary.
    """
    cfg = replace(cfg)  # fit_schedule may shorten the schedule: the caller's config stays as given
    torch.set_num_threads(cfg.threads)
    if ablation_dir is not None and not cfg.semantic:
        raise ValueError("ablation_dir trains the ablation beside S3E: cfg.semantic must be True")
    runs = [_Run(cfg, cfg.semantic, out_dir, resume, log)]
    if ablation_dir is not None:
        runs.append(_Run(cfg, False, ablation_dir, resume, log))
    if len({r.step for r in runs}) > 1:
        raise ValueError(f"checkpoints are at different steps {[r.step for r in runs]}: "
                         "a lockstep pair must resume together")
    step = runs[0].step
    w = LossWeights(grounding=cfg.grounding)
    data = TrainingBatches(cfg)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(step, cfg.steps), num_workers=cfg.workers,
        pin_memory=cfg.device.startswith("cuda"), worker_init_fn=_quiet_worker if cfg.workers else None,
        prefetch_factor=4 if cfg.workers else None,
        # spawned, not forked: a fork inherits OpenCV's and OpenMP's thread pools in whatever
        # state the parent left them, and a forked loader hung inside OpenCV that way
        multiprocessing_context="spawn" if cfg.workers else None)

    t0 = time.monotonic()
    calibrate = (step + 10, step + 60)  # steps between which the speed is measured
    t_cal = None
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train deblur")
    for batch in loader:
        if step >= cfg.steps:
            break
        batch = {k: (v.to(cfg.device, non_blocking=True) if torch.is_tensor(v)
                     else {n: m.to(cfg.device, non_blocking=True) for n, m in v.items()})
                 for k, v in batch.items()}
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for r in runs:
            r.train_step(batch, lr, w)
        step += 1
        bar.update(1)
        if fit_schedule and max_seconds is not None:
            if step == calibrate[0]:
                t_cal = time.monotonic()
            elif step == calibrate[1] and t_cal is not None:
                rate = (calibrate[1] - calibrate[0]) / (time.monotonic() - t_cal)
                # keep a little time for the final saves and exports
                left = max_seconds - (time.monotonic() - t0) - min(20.0, 0.2 * max_seconds)
                fitted = step + max(1, int(0.95 * rate * left))
                if fitted < cfg.steps:
                    log(f"{rate:.1f} steps/s: schedule shortened from {cfg.steps} to {fitted} steps "
                        f"to end within {max_seconds:.0f} s")
                    cfg.steps = fitted
                    bar.total = fitted
                    for r in runs:
                        r.write_config()
        if step % 20 == 0:
            bar.set_postfix(content=f"{runs[0].run['content']:.4f}",
                            cap=f"{runs[0].run['caption_blurred']:.3f}")
        out_of_time = max_seconds is not None and time.monotonic() - t0 > max_seconds
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            for r in runs:
                r.record(time.monotonic() - t0)
                r.save()
                if not progress:  # without a bar, the checkpoint lines are the progress report
                    log(json.dumps({"run": "s3e" if r.semantic else "ablation", **r.history[-1]}))
        if out_of_time and step < cfg.steps:
            log(f"stopped at step {step} after {max_seconds:.0f} s (resume to continue)")
            break
    bar.close()
    out = {"step": step, "steps": cfg.steps, "history": runs[0].history, "checkpoint": str(runs[0].ckpt),
           "seconds": round(time.monotonic() - t0, 1)}
    if ablation_dir is not None:
        out["ablation"] = {"history": runs[1].history, "checkpoint": str(runs[1].ckpt)}
    return out


def plot_training(histories: dict[str, list[dict[str, float]]], path: str | Path) -> Path:
    """Smoothed training losses against the step, one line per run (``{"s3e": history,
    "ablation": history}``, the ``history`` of :func:`train`'s result or of a checkpoint)."""
    # matplotlib is slow to import and only this function plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("content", "content (Charbonnier)"), ("feature", "feature consistency"),
              ("caption_blurred", "caption CE on the blurred input"),
              ("wasserstein", "critic: Wasserstein estimate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, hist in histories.items():
            pts = [(h["step"], h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def model_from_checkpoint(path: str | Path, semantic: bool | None = None) -> S3EDeblur:
    """The network of a training checkpoint (``checkpoint.pt`` and its ``config.json``)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)  # GPU-trained too
    sd = state["model"]
    cfg_path = Path(path).parent / "config.json"
    sem = semantic
    saved = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if sem is None:
        sem = saved.get("semantic", True)
    model = S3EDeblur(S3EConfig(semantic=sem, **_saved_generator(saved)))
    model.load_state_dict(sd)
    return model.eval()


def train_and_export(cfg: DeblurTrainConfig, out: Path, resume: bool = False, progress: bool = True,
                     max_seconds: float | None = None, ablation_dir: Path | None = None,
                     fit_schedule: bool = False, export: Path | None = None,
                     ablation_export: Path | None = None, init: Path | None = None,
                     ablation_init: Path | None = None, log=print) -> dict[str, Any]:
    """``vistream train deblur``: start afresh unless ``resume`` (an old checkpoint is removed),
    :func:`train`, export the weights files asked for, plot the losses; writes
    ``out/summary.json`` and returns the summary. ``init``/``ablation_init`` are the starting
    weights as given on the command line (recorded in the exports). ValueError when a
    checkpoint or starting weights do not fit ``cfg``."""
    for d in [out] + ([ablation_dir] if ablation_dir is not None else []):
        if not resume and (d / "checkpoint.pt").exists():
            log(f"starting afresh: {d / 'checkpoint.pt'} is replaced (use --resume to continue it)")
            (d / "checkpoint.pt").unlink()
    res = train(cfg, out, resume=resume, progress=progress, max_seconds=max_seconds, log=log,
                ablation_dir=ablation_dir, fit_schedule=fit_schedule)
    summary: dict[str, Any] = {"out": str(out), "semantic": cfg.semantic, "step": res["step"],
                               "steps": res["steps"], "seconds": res["seconds"],
                               "last": res["history"][-1] if res["history"] else None}
    targets = [(out, cfg.semantic, export, init)]
    if ablation_dir is not None:
        summary["ablation"] = {"out": str(ablation_dir),
                               "last": (res["ablation"]["history"] or [None])[-1]}
        targets.append((ablation_dir, False, ablation_export, ablation_init))
    generator = [getattr(cfg, k) for k in _SIZE_FIELDS if getattr(cfg, k)]
    for folder, sem, path, start in targets:
        if path is None:
            continue
        model = model_from_checkpoint(folder / "checkpoint.pt", semantic=sem)
        name = "s3e" if sem else "ablation"
        export_weights(model, path, extra={"model_id": f"{name}-{res['step']}steps-seed{cfg.seed}",
                                           "train": {"steps": res["step"], "batch": cfg.batch,
                                                     "size": cfg.size, "lr": cfg.lr, "seed": cfg.seed,
                                                     "device": cfg.device, "generator": generator,
                                                     "grounding": cfg.grounding,
                                                     "augment": cfg.augment, "photos": cfg.photos,
                                                     "init": str(start or "")}})
        summary.setdefault("exports", []).append(str(path))
    histories = {"s3e" if cfg.semantic else "ablation": res["history"]}
    if ablation_dir is not None:
        histories["ablation"] = res["ablation"]["history"]
    summary["plot"] = str(plot_training(histories, out / "losses.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
