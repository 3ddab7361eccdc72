"""BNAS search (arXiv 1911.10862): PC-DARTS over 1-bit operations with performance-based
operation space reduction.

Schedule: ``warmup`` epochs of the full space, then one reduction round after every
``round_epochs`` epochs until each edge keeps one operation (K - 1 = 7 rounds). An epoch is
first-order DARTS: for every training batch one step of the network weights (Adam) on it and one
step of ``alpha``/``beta`` (Adam) on a batch of the search-validation images. A reduction round
samples sub-networks on the shared weights (:mod:`models.nas.reduction`; one-shot: the sampled
nets are scored without training of their own), scores each on ``eval_batches`` batches of the
search-validation images (BatchNorm on batch statistics, its running statistics restored) and
drops one operation per edge. ``reduce=False`` is plain PC-DARTS for the same epochs: the
genotype is then the argmax of ``alpha`` per edge (``none`` excluded).

Genotype (both): per intermediate node the two incoming edges of highest ``beta`` x weight of
the edge's best operation, ``none`` excluded, as PC-DARTS derives it.

Cost accounting (per epoch, in the round log): images seen and the supernet's forward
multiply-accumulates per image over the remaining space, so ``full_epochs`` = sum over epochs of
(this epoch's MACs / the full space's MACs) counts the search in epochs of the unreduced
supernet; the sampling's forward passes are counted too (``sample_macs``).

Resumable: ``state.pt`` after every epoch (model, optimisers, mask, reducer, history, RNG);
``rounds.jsonl`` logs every epoch and round; ``remaining.png`` draws the operations left per
edge; ``genotype.json`` and ``search.json`` (summary) are written at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vistream.models.data import DataBundle, Split, batches
from vistream.models.nas.genotype import Genotype, save_genotype
from vistream.models.nas.ops import PRIMITIVES
from vistream.models.nas.reduction import EdgeReducer
from vistream.models.nas.supernet import SuperNet
from vistream.models.train import save_atomic


@dataclass
class SearchConfig:
    C: int = 8
    layers: int = 3
    steps: int = 4
    k: int = 4                    # PC-DARTS: 1/k of the channels go through the mixed op
    size: int = 16                # search images are resized to size x size (the data is 32 px)
    train_images: int = 512      # weight-training images (seeded subset of the train split)
    search_val_images: int = 256  # alpha/beta steps and the sampled nets' scores (val split)
    batch_size: int = 64
    warmup: int = 2
    round_epochs: int = 1
    lr: float = 3e-3              # weights, Adam (cosine over the whole search)
    arch_lr: float = 3e-3         # alpha / beta, Adam
    passes: int = 2               # sampling passes per round (each candidate sampled once a pass)
    eval_batches: int = 2         # search-validation batches per sampled net
    tau: float = 0.05             # softmax temperature of the sampled accuracies
    ucb: bool = False
    ucb_c: float = 0.5
    reduce: bool = True           # False: plain PC-DARTS for the same epochs
    seed: int = 0
    threads: int = 1
    epochs: int | None = None     # total epochs; default warmup + 7 * round_epochs

    def total_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return self.warmup + (len(PRIMITIVES) - 1) * self.round_epochs


def _resize(split: Split, size: int, n: int | None, seed: int) -> Split:
    s = split.subset(n, seed)
    if s.x.shape[-1] == size:
        return s
    x = F.interpolate(torch.from_numpy(s.x), size=(size, size), mode="area").numpy()
    return Split(np.ascontiguousarray(x), s.y)


def search_data(data: DataBundle, cfg: SearchConfig) -> tuple[Split, Split]:
    return (_resize(data.train, cfg.size, cfg.train_images, cfg.seed),
            _resize(data.val, cfg.size, cfg.search_val_images, cfg.seed))


def derive_genotype(net: SuperNet, meta: dict | None = None) -> Genotype:
    """Per node the two incoming edges of highest beta x (weight of the edge's best op)."""
    w = net.op_weights().detach().clone()
    w[:, :, 0] = -1.0  # none is never chosen
    out = {}
    for t, kind in ((0, "normal"), (1, "reduce")):
        pairs, offset = [], 0
        for i in range(net.steps):
            n_in = i + 2
            bw = F.softmax(net.betas[t, offset:offset + n_in].detach(), dim=-1)
            best = w[t, offset:offset + n_in].max(dim=-1)
            strength = bw * best.values.clamp(min=0)
            # edges whose only remaining op is none have strength 0 and their op is 'none':
            ranked = sorted(range(n_in), key=lambda j: (-float(strength[j]), j))[:2]
            for j in sorted(ranked):
                k = int(best.indices[j])
                pairs.append((PRIMITIVES[k] if k != 0 else "skip_connect", j))
            offset += n_in
        out[kind] = tuple(pairs)
    concat = tuple(range(2, 2 + net.steps))
    return Genotype(out["normal"], concat, out["reduce"], concat, meta or {})


class Search:
    """One search run in a folder (``state.pt``, ``rounds.jsonl``, ``remaining.png``, ...)."""

    def __init__(self, data: DataBundle, cfg: SearchConfig, out: Path) -> None:
        self.data, self.cfg, self.out = data, cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.net = SuperNet(cfg.C, cfg.layers, cfg.steps, cfg.steps, data.num_classes,
                            int(data.train.x.shape[1]), 3, cfg.k)
        self.w_opt = torch.optim.Adam(self.net.weight_parameters(), lr=cfg.lr)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
        self.reducer = EdgeReducer(tuple(self.net.mask.shape), cfg.tau, cfg.ucb, cfg.ucb_c)
        self.train_split, self.val_split = search_data(data, cfg)
        self.epoch, self.rounds, self.history = 0, 0, []
        self.seconds = 0.0
        self.full_macs = self.net.forward_macs((cfg.size, cfg.size))
        self.rng = np.random.default_rng(cfg.seed)

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.out / "state.pt"

    def save(self) -> None:
        save_atomic({"model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(),
                     "a_opt": self.a_opt.state_dict(), "reducer": self.reducer.state_dict(),
                     "epoch": self.epoch, "rounds": self.rounds, "history": self.history,
                     "seconds": self.seconds, "config": asdict(self.cfg),
                     "torch_rng": torch.get_rng_state(),
                     "np_rng": json.dumps(self.rng.bit_generator.state)}, self.state_path)

    def resume(self) -> bool:
        """Load ``state.pt`` if present (same config required); True when resumed."""
        if not self.state_path.exists():
            return False
        st = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if st["config"] != asdict(self.cfg):
            diff = sorted(k for k in st["config"] if st["config"][k] != asdict(self.cfg).get(k))
            raise ValueError(f"{self.state_path} was written with other settings ({', '.join(diff)}); "
                             "use the same options or another --out")
        self.net.load_state_dict(st["model"])
        self.w_opt.load_state_dict(st["w_opt"])
        self.a_opt.load_state_dict(st["a_opt"])
        self.reducer.load_state_dict(st["reducer"])
        self.epoch, self.rounds = int(st["epoch"]), int(st["rounds"])
        self.history, self.seconds = list(st["history"]), float(st["seconds"])
        torch.set_rng_state(st["torch_rng"])
        self.rng.bit_generator.state = json.loads(st["np_rng"])
        return True

    def log(self, rec: dict) -> None:
        self.history.append(rec)
        with open(self.out / "rounds.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ training
    def _lr_factor(self) -> float:
        total = self.cfg.total_epochs()
        return 0.5 * (1 + np.cos(np.pi * self.epoch / max(total, 1)))

    def train_epoch(self, progress: bool) -> dict:
        cfg, net = self.cfg, self.net
        for g in self.w_opt.param_groups:
            g["lr"] = float(cfg.lr * self._lr_factor())
        mean, std = self.data.mean, self.data.std
        arch_iter = batches(self.val_split, cfg.batch_size, mean, std, shuffle=True,
                            seed=cfg.seed * 1000 + self.epoch)
        n_batches = -(-len(self.train_split) // cfg.batch_size)
        it = batches(self.train_split, cfg.batch_size, mean, std, shuffle=True, augment=True,
                     seed=cfg.seed * 1000 + self.epoch)
        bar = tqdm(it, total=n_batches, desc=f"search epoch {self.epoch + 1}/{cfg.total_epochs()}",
                   leave=False, disable=not progress)
        correct = seen = images = 0
        net.train()
        for x, y in bar:
            try:
                xa, ya = next(arch_iter)
            except StopIteration:
                arch_iter = batches(self.val_split, cfg.batch_size, mean, std, shuffle=True,
                                    seed=cfg.seed * 1000 + self.epoch + 7)
                xa, ya = next(arch_iter)
            self.a_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xa), ya).backward()
            self.a_opt.step()
            self.w_opt.zero_grad(set_to_none=True)
            logits = net(x)
            F.cross_entropy(logits, y).backward()
            torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            self.w_opt.step()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            images += len(y) + len(ya)
            bar.set_postfix(acc=f"{correct / seen:.3f}")
        return {"train_acc": correct / max(seen, 1), "images": images}

    @torch.no_grad()
    def _accuracy(self, choice: torch.Tensor | None, max_batches: int | None) -> float:
        correct = total = 0
        for x, y in batches(self.val_split, self.cfg.batch_size, self.data.mean, self.data.std,
                            max_batches=max_batches):
            correct += int((self.net(x, choice).argmax(1) == y).sum())
            total += len(y)
        return correct / max(total, 1)

    def reduction_round(self, progress: bool) -> dict:
        net, cfg = self.net, self.cfg
        mask = net.mask.numpy().copy()
        alphas = net.alphas.detach().numpy()
        plan = self.reducer.plan(alphas, mask)
        last = np.zeros(mask.shape[:2], dtype=np.int64)
        for t in range(mask.shape[0]):
            for e in range(mask.shape[1]):
                last[t, e] = int(np.flatnonzero(mask[t, e])[0])
        acc_sum, acc_n = np.zeros(mask.shape), np.zeros(mask.shape)
        buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
        net.train()  # BatchNorm on batch statistics for the sub-networks
        samples = list(self.reducer.samples(plan, cfg.passes, last, self.rng)) if not cfg.ucb else None
        n = cfg.passes * max((len(c) for c in plan.values()), default=0)
        bar = tqdm(total=n, desc=f"round {self.rounds + 1}: sampled nets", leave=False, disable=not progress)
        gen = iter(samples) if samples is not None else self.reducer.samples(plan, cfg.passes, last, self.rng)
        accs, sample_images = [], 0
        for choice in gen:
            acc = self._accuracy(torch.from_numpy(choice), cfg.eval_batches)
            self.reducer.credit(choice, plan, acc, acc_sum, acc_n)
            accs.append(acc)
            sample_images += min(len(self.val_split), cfg.eval_batches * cfg.batch_size)
            bar.update(1)
        bar.close()
        net.load_state_dict({**net.state_dict(), **buffers})
        sample_macs = self._sample_macs(plan, last) * sample_images
        dropped = self.reducer.reduce(plan, mask, acc_sum, acc_n)
        net.mask.copy_(torch.from_numpy(mask))
        self.rounds += 1
        return {"kind": "round", "round": self.rounds, "epoch": self.epoch, "samples": len(accs),
                "sample_acc_mean": float(np.mean(accs)) if accs else None,
                "sample_acc_max": float(np.max(accs)) if accs else None,
                "sample_macs": int(sample_macs),
                "dropped": {f"{'nr'[t]}{e}": PRIMITIVES[k] for (t, e), k in dropped.items()},
                "remaining": self.remaining()}

    def _sample_macs(self, plan, last) -> int:
        """Forward MACs per image of a sampled net (one op per edge): the MACs of the current
        space with every edge cut to its first candidate, measured on a copy of the mask."""
        mask = self.net.mask.clone()
        one = torch.zeros_like(mask)
        for t in range(mask.shape[0]):
            for e in range(mask.shape[1]):
                k = plan[(t, e)][0] if (t, e) in plan else int(last[t, e])
                one[t, e, k] = True
        self.net.mask.copy_(one)
        try:
            return self.net.forward_macs((self.cfg.size, self.cfg.size))
        finally:
            self.net.mask.copy_(mask)

    def remaining(self) -> dict[str, list[str]]:
        m = self.net.mask.numpy()
        return {f"{'nr'[t]}{e}": [PRIMITIVES[k] for k in np.flatnonzero(m[t, e])]
                for t in range(m.shape[0]) for e in range(m.shape[1])}

    def done(self) -> bool:
        return self.epoch >= self.cfg.total_epochs()

    def step(self, progress: bool = True) -> list[dict]:
        """One epoch (and the reduction round that falls after it); saves the state."""
        cfg = self.cfg
        t0 = time.perf_counter()
        macs = self.net.forward_macs((cfg.size, cfg.size))
        rec = self.train_epoch(progress)
        val = self._accuracy(None, None)
        self.epoch += 1
        out = [{"kind": "epoch", "epoch": self.epoch, **rec, "search_val_acc": val,
                "macs_per_image": macs, "full_space_fraction": macs / self.full_macs,
                "ops_left": int(self.net.mask.sum())}]
        after_warmup = self.epoch - cfg.warmup
        if cfg.reduce and after_warmup > 0 and after_warmup % cfg.round_epochs == 0 \
                and int(self.net.mask.sum(-1).max()) > 1:
            out.append(self.reduction_round(progress))
        dt = time.perf_counter() - t0
        self.seconds += dt
        out[0]["seconds"] = round(dt, 1)
        for r in out:
            self.log(r)
        self.save()
        return out

    def summary(self) -> dict:
        epochs = [h for h in self.history if h["kind"] == "epoch"]
        rounds = [h for h in self.history if h["kind"] == "round"]
        train_macs = sum(3 * h["macs_per_image"] * h["images"] for h in epochs)  # fwd + ~2x bwd
        sample_macs = sum(h["sample_macs"] for h in rounds)
        full_epoch = 3 * self.full_macs * (epochs[0]["images"] if epochs else 0)
        return {"epochs": len(epochs), "rounds": len(rounds),
                "full_epochs": round(sum(h["full_space_fraction"] for h in epochs), 3),
                "search_macs": int(train_macs + sample_macs), "train_macs": int(train_macs),
                "sample_macs": int(sample_macs),
                "cost_in_full_epochs": round((train_macs + sample_macs) / max(full_epoch, 1), 3),
                "seconds": round(self.seconds, 1), "reduce": self.cfg.reduce, "ucb": self.cfg.ucb,
                "final_search_val_acc": epochs[-1]["search_val_acc"] if epochs else None,
                "config": asdict(self.cfg), "full_space_macs_per_image": self.full_macs}


def run_search(data: DataBundle, cfg: SearchConfig, out: Path, resume: bool = False,
               progress: bool = True, echo: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a search in ``out``; returns the summary (also ``out/search.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    if not resume and (out / "state.pt").exists():
        raise ValueError(f"{out} already holds a search (state.pt): pass --resume to continue it "
                         "or choose another --out")
    if not resume and (out / "rounds.jsonl").exists():
        (out / "rounds.jsonl").unlink()
    s = Search(data, cfg, out)
    if resume and s.resume() and echo:
        echo(f"resumed at epoch {s.epoch}/{cfg.total_epochs()}, {s.rounds} rounds done")
    bar = tqdm(total=cfg.total_epochs(), initial=s.epoch, desc="BNAS search" if cfg.reduce else "PC-DARTS",
               disable=not progress)
    while not s.done():
        recs = s.step(progress)
        bar.update(1)
        bar.set_postfix(val=f"{recs[0]['search_val_acc']:.3f}", ops=recs[-1].get("remaining") and
                        int(s.net.mask.sum()))
        if echo:
            for r in recs:
                echo(json.dumps({k: v for k, v in r.items() if k != "remaining"}))
        if cfg.reduce:
            plot_remaining(s.history, out / "remaining.png")
    bar.close()
    summary = s.summary()
    g = derive_genotype(s.net, {"search": str(out), "reduce": cfg.reduce, "ucb": cfg.ucb,
                                "seed": cfg.seed})
    save_genotype(g, out / "genotype.json")
    summary["genotype"] = g.to_dict()
    (out / "search.json").write_text(json.dumps(summary, indent=1))
    if cfg.reduce:
        plot_remaining(s.history, out / "remaining.png")
    return summary


def plot_remaining(history: list[dict], path: Path) -> None:
    """Grid of edges x operations: the round in which each operation left the space (the last
    one of each edge marked 'kept'), and the number of operations left per edge by round."""
    # deferred: matplotlib is heavy and only the plot needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h for h in history if h["kind"] == "round"]
    if not rounds:
        return
    edges = list(rounds[-1]["remaining"])
    gone = np.full((len(edges), len(PRIMITIVES)), np.nan)
    for r in rounds:
        for edge, op in r["dropped"].items():
            gone[edges.index(edge), PRIMITIVES.index(op)] = r["round"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.28 * len(edges) + 2),
                                  gridspec_kw={"width_ratios": [3, 2]})
    im = ax.imshow(gone, cmap="viridis", aspect="auto", vmin=1, vmax=len(PRIMITIVES) - 1)
    for i, edge in enumerate(edges):
        for op in rounds[-1]["remaining"][edge]:
            ax.text(PRIMITIVES.index(op), i, "kept" if len(rounds[-1]["remaining"][edge]) == 1 else "left",
                    ha="center", va="center", fontsize=7, color="red")
    ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(edges)), edges, fontsize=7)
    ax.set_title("round in which each operation was dropped (n = normal, r = reduce edge)")
    fig.colorbar(im, ax=ax, label="round")
    for edge in edges:
        counts = [len(PRIMITIVES)] + [len(r["remaining"][edge]) for r in rounds]
        ax2.plot(range(len(counts)), counts, color="grey", alpha=0.4)
    mean = [len(PRIMITIVES)] + [np.mean([len(v) for v in r["remaining"].values()]) for r in rounds]
    ax2.plot(range(len(mean)), mean, color="black", lw=2, label="mean over edges")
    ax2.set_xlabel("round")
    ax2.set_ylabel("operations left per edge")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
