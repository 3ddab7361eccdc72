"""S3E-Deblur: deblurring guided by captions through a structured-spatial semantic tree.

Paper: "Structured-Spatial Semantic Embedding for Image Deblurring" (S3E-Deblur,
arXiv 1910.03853 / CVPR 2019 abstract in shared/seeds). An image captioner (ImC) describes
the blurred image; its caption is parsed into an S3-tree whose nodes are phrases carrying
spatial features; the node features are embedded into a GAN deblurring generator (ImD);
captioner, tree and generator are co-trained end to end.

What is implemented here (small enough to train on two CPU cores):

* **Captioner** - a 4-layer CNN encoder on the image resized to 96x96 (a 12x12 feature grid)
  and a GRU decoder with additive spatial attention (Show-Attend-Tell style): at every word
  it attends over the grid, so each word carries a hidden state, a context vector and an
  attention map.
* **S3-tree** - the caption grammar of :mod:`vistream.models.data.blur` is parsed into a tree:
  root (scene) -> object-phrase nodes (``small red circle top left``) -> an *attribute*
  sub-node (size, colour, shape words) and a *position* sub-node (vertical, horizontal
  words); relation words (``left_of``, ``above``, ``below``) are nodes linking two object
  phrases. A node's feature is the mean of its words' [hidden, context] states; its spatial
  feature is the mean of its words' attention maps. Object nodes are composed child-sum
  style from their attribute, position and relation nodes; the root is the mean of its
  objects. The parser accepts any token sequence, so a predicted (possibly malformed)
  caption still gives a tree.
* **Embedding into the generator** - at the generator's bottleneck (1/4 resolution) every
  object node paints its projected feature vector into the feature map through its
  (upsampled, max-normalised) attention map, and the root modulates the map FiLM-style
  (``F * (1 + gamma) + beta``). This tells the generator *what* is *where* (an object's exact
  palette colour and shape), which the blurred pixels only hint at.
* **Generator** - pixel-unshuffle by 2, a stride-2 conv to 1/4, residual blocks, pixel-
  shuffle back up with a skip; it predicts a residual added to the blurred input. Optional
  (``c3``, ``blocks8`` > 0; not in the shipped weights): a second stride-2 conv to 1/8 with
  ``blocks8`` residual blocks there, brought back by a 1x1 conv + pixel-shuffle and added to
  the 1/4 features before the last 1/4 block. Why: a block at 1/8 costs a quarter of one at
  1/4 with the same channels, and it widens the receptive field (8 convs at 1/8 see ~128 px,
  against the severe set's 17-23 px kernels), so capacity grows within the CPU frame budget.
  The 1/8 level's output conv starts at zero, so a run can *grow* it onto trained weights
  without it (``--init`` with the same C1,C2,BLOCKS): training starts from the very function
  the start computed.
  ``semantic=False`` is the ablation: the very same network (same parameters) fed an all-zero
  tree embedding.
* **Critic** - WGAN-GP (gradient penalty 10), a small strided conv net without norms.
* **Losses** - content (Charbonnier on pixels), feature consistency (L1 between the
  captioner encoder's features of the deblurred and the sharp image; gradients reach only
  the generator, so the encoder cannot cheat by becoming blur-invariant), adversarial
  (WGAN), captioning cross-entropy on the blurred input (the tree's source) and on the sharp
  image (so the captioner also reads deblurred images). The content loss flows back through
  the tree into the captioner: that is the end-to-end co-training.

What the paper leaves open (or we could not confirm) and what we chose: the captioner and
generator architectures (ours are tiny CPU-sized stand-ins for an LSTM captioner and a
DeblurGAN-class generator), the tree construction (the paper builds it StructCap-style from
a parser; our grammar is fixed so a deterministic parser suffices), how node features enter
the generator (we use attention-map painting plus FiLM at the bottleneck), the loss weights
(content 1, feature 0.05, adversarial 0.0005, captions 0.1 each - the small adversarial
weight keeps PSNR, the figure we are judged on), and teacher forcing: during training the
tree is built from the teacher-forced decoding of the ground-truth caption, at inference
from the greedy caption.

Options beyond the paper, off by default: ``grounding`` (a cross-entropy pulling each object
node's attention map onto the grid cells its object covers - our captions come from scene
descriptions, so positions are known at training time) and ``paint_half`` (the object nodes
are painted into the 1/2-resolution features too). Fine-tuning the shipped weights with both
for 3000 steps tripled the attention on the objects but gave no semantic gain
(docs/deblur.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.data.blur import BOS, EOS, GRID, MAX_LEN, MAX_OBJECTS, PAD, RELATIONS, VOCAB, WORD2ID

CAPTION_SIZE = 96  # the captioner always sees the image at 96x96 (a 12x12 attention grid)
FORMAT = "vistream-s3e-deblur/1"
_REL_IDS = [WORD2ID[r] for r in RELATIONS]


@dataclass
class S3EConfig:
    c1: int = 32          # channels at 1/2 resolution
    c2: int = 48          # channels at 1/4 resolution (bottleneck)
    blocks: int = 3       # residual blocks at the bottleneck
    c3: int = 0           # channels at 1/8 resolution (0: no 1/8 level)
    blocks8: int = 0      # residual blocks at 1/8 resolution
    enc: int = 64         # captioner encoder channels
    hidden: int = 128     # GRU hidden size
    emb: int = 32         # word embedding size
    node: int = 64        # tree node feature size
    semantic: bool = True
    paint_half: bool = False  # also paint the object nodes into the 1/2-resolution features


# --------------------------------------------------------------------------- captioner


class Captioner(nn.Module):
    """CNN encoder + GRU decoder with additive spatial attention."""

    def __init__(self, cfg: S3EConfig) -> None:
        super().__init__()
        e = cfg.enc
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(24, 48, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(48, e, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(e, e, 3, 1, 1), nn.ReLU(inplace=True),
        )
        self.embed = nn.Embedding(len(VOCAB), cfg.emb)
        self.init_h = nn.Linear(e, cfg.hidden)
        self.att_f = nn.Linear(e, 64)
        self.att_h = nn.Linear(cfg.hidden, 64)
        self.att_v = nn.Linear(64, 1)
        self.gru = nn.GRUCell(cfg.emb + e, cfg.hidden)
        self.out = nn.Linear(cfg.hidden + e, len(VOCAB))
        self.state_dim = cfg.hidden + e

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (CAPTION_SIZE, CAPTION_SIZE):
            images = F.interpolate(images, size=(CAPTION_SIZE, CAPTION_SIZE), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images - 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder feature grid (B, C, 12, 12) of RGB images in [0, 1]."""
        return self.encoder(self.prepare(images))

    def _advance(self, word, h, feats, pf):
        """One decoder step from an embedded word: new hidden, state [h, context], attention."""
        a = self.att_v(torch.tanh(pf + self.att_h(h)[:, None])).squeeze(-1)  # (B, N)
        alpha = torch.softmax(a, -1)
        ctx = (alpha[..., None] * feats).sum(1)
        h = self.gru(torch.cat([word, ctx], -1), h)
        return h, torch.cat([h, ctx], -1), alpha

    def _step(self, tok, h, feats, pf):
        h, state, alpha = self._advance(self.embed(tok), h, feats, pf)
        return self.out(state), h, state, alpha

    def _start(self, images):
        g = self.features(images)
        feats = g.flatten(2).transpose(1, 2)  # (B, N, C)
        return feats, self.att_f(feats), torch.tanh(self.init_h(feats.mean(1)))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Teacher forcing: logits (B,T,V), states (B,T,S), attention (B,T,N)."""
        feats, pf, h = self._start(images)
        # the words fed in are known in advance: embed them, and read out the logits, for all
        # steps at once (fewer, larger kernels; the recurrence itself stays step by step)
        prev = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], 1)
        words = self.embed(prev)
        states, alphas = [], []
        for t in range(tokens.shape[1]):
            h, st, al = self._advance(words[:, t], h, feats, pf)
            states.append(st)
            alphas.append(al)
        states = torch.stack(states, 1)
        return self.out(states), states, torch.stack(alphas, 1)

    @torch.no_grad()
    def greedy(self, images: torch.Tensor, max_len: int = MAX_LEN):
        """Greedy decoding: tokens (B,T), states, attention (as in forward)."""
        feats, pf, h = self._start(images)
        prev = torch.full((images.shape[0],), BOS, dtype=torch.long, device=images.device)
        toks, states, alphas = [], [], []
        done = torch.zeros_like(prev, dtype=torch.bool)
        for _ in range(max_len):
            lo, h, st, al = self._step(prev, h, feats, pf)
            lo[:, PAD] = -1e9
            lo[:, BOS] = -1e9
            prev = lo.argmax(-1)
            prev = torch.where(done, torch.full_like(prev, PAD), prev)
            toks.append(prev)
            states.append(st)
            alphas.append(al)
            done = done | (prev == EOS)
            if bool(done.all()):
                break
        return torch.stack(toks, 1), torch.stack(states, 1), torch.stack(alphas, 1)


# --------------------------------------------------------------------------- S3-tree


@dataclass
class TreeNode:
    """A node of one caption's S3-tree (for inspection; the model uses the batched masks)."""

    kind: str                  # "root", "object", "attribute", "position", "relation"
    words: list[str]
    positions: list[int]
    children: list[TreeNode]


def parse_tree(ids) -> TreeNode:
    """Parse token ids into an S3-tree: runs of non-relation words are object phrases (the
    first three words their attribute node, the rest their position node); relation words
    link the phrases before and after them. At most MAX_OBJECTS objects."""
    root = TreeNode("root", [], [], [])
    phrase: list[int] = []
    seq = [int(i) for i in ids]
    rel_pending: TreeNode | None = None

    def close():
        nonlocal phrase, rel_pending
        if phrase and len([c for c in root.children if c.kind == "object"]) < MAX_OBJECTS:
            attr, pos = phrase[:3], phrase[3:]
            node = TreeNode("object", [VOCAB[seq[p]] for p in phrase], list(phrase), [
                TreeNode("attribute", [VOCAB[seq[p]] for p in attr], attr, [])])
            if pos:
                node.children.append(TreeNode("position", [VOCAB[seq[p]] for p in pos], pos, []))
            if rel_pending is not None:
                rel_pending.children.append(node)
                rel_pending = None
            root.children.append(node)
        phrase = []

    for t, i in enumerate(seq):
        if i in (EOS, PAD):
            break
        if i in _REL_IDS:
            close()
            prev_obj = [c for c in root.children if c.kind == "object"]
            rel = TreeNode("relation", [VOCAB[i]], [t], [prev_obj[-1]] if prev_obj else [])
            root.children.append(rel)
            rel_pending = rel
        elif i >= 3:
            phrase.append(t)
    close()
    return root


def tree_masks(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batched averaging masks over word positions, one row per object node:
    ``obj``, ``attr``, ``pos``, ``rel`` (B, K, T), and ``present`` (B, K)."""
    b, t = tokens.shape
    k = MAX_OBJECTS
    m = {n: torch.zeros(b, k, t) for n in ("obj", "attr", "pos", "rel")}
    present = torch.zeros(b, k)
    for i, row in enumerate(tokens.tolist()):
        tree = parse_tree(row)
        objs = [c for c in tree.children if c.kind == "object"]
        index = {id(o): j for j, o in enumerate(objs)}
        for j, o in enumerate(objs):
            present[i, j] = 1
            m["obj"][i, j, o.positions] = 1
            for c in o.children:
                m["attr" if c.kind == "attribute" else "pos"][i, j, c.positions] = 1
        for r in (c for c in tree.children if c.kind == "relation"):
            for o in r.children:
                m["rel"][i, index[id(o)], r.positions] = 1
    for n in m:
        m[n] = m[n] / m[n].sum(-1, keepdim=True).clamp(min=1)
    m["present"] = present
    return {n: v.to(tokens.device) for n, v in m.items()}


class TreeEmbed(nn.Module):
    """Node features of the S3-tree: object vectors (B,K,D), their attention maps (B,K,N)
    and the root vector (B,D)."""

    def __init__(self, cfg: S3EConfig, state_dim: int) -> None:
        super().__init__()
        self.leaf = nn.Linear(state_dim, cfg.node)
        self.compose = nn.Linear(3 * cfg.node, cfg.node)
        self.node = cfg.node

    def forward(self, states, alphas, masks):
        leaf = torch.tanh(self.leaf(states))                       # word-level node features
        attr, pos, rel = (masks[n] @ leaf for n in ("attr", "pos", "rel"))
        obj = torch.tanh(self.compose(torch.cat([attr, pos, rel], -1)))  # child-sum composition
        present = masks["present"][..., None]
        obj = obj * present
        att = (masks["obj"] @ alphas) * present                    # spatial feature of a node
        root = obj.sum(1) / present.sum(1).clamp(min=1)
        return obj, att, root


# --------------------------------------------------------------------------- generator


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, 1, 1)
        self.c2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(x), inplace=True))


class Generator(nn.Module):
    """Residual deblurring generator; tree node features are embedded at the bottleneck."""

    def __init__(self, cfg: S3EConfig) -> None:
        super().__init__()
        self.head = nn.Conv2d(12, cfg.c1, 3, 1, 1)
        self.down = nn.Conv2d(cfg.c1, cfg.c2, 3, 2, 1)
        self.blocks = nn.ModuleList(ResBlock(cfg.c2) for _ in range(cfg.blocks))
        self.deep = None
        if cfg.c3 > 0 and cfg.blocks8 > 0:
            self.deep = nn.Sequential(nn.Conv2d(cfg.c2, cfg.c3, 3, 2, 1), nn.ReLU(inplace=True),
                                      *(ResBlock(cfg.c3) for _ in range(cfg.blocks8)),
                                      nn.Conv2d(cfg.c3, 4 * cfg.c2, 1), nn.PixelShuffle(2))
            # starts at zero: a generator without the 1/8 level (--init) loads and runs unchanged
            nn.init.zeros_(self.deep[-2].weight)
            nn.init.zeros_(self.deep[-2].bias)
        self.paint = nn.Linear(cfg.node, cfg.c2)     # object node -> feature painted via its map
        self.film = nn.Linear(cfg.node, 2 * cfg.c2)  # root -> FiLM
        self.paint_half = None
        if cfg.paint_half:  # starts at zero: weights trained without it load and run unchanged
            self.paint_half = nn.Linear(cfg.node, cfg.c1)
            nn.init.zeros_(self.paint_half.weight)
            nn.init.zeros_(self.paint_half.bias)
        self.up = nn.Conv2d(cfg.c2, 4 * cfg.c1, 1)
        self.tail = nn.Conv2d(cfg.c1, 12, 3, 1, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, obj=None, att=None, root=None) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 8 if self.deep is not None else 4
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        s = F.relu(self.head(F.pixel_unshuffle(xp - 0.5, 2)), inplace=True)
        f = F.relu(self.down(s), inplace=True)
        f = self.blocks[0](f)
        maps = None
        if obj is not None:
            g = int(round(math.sqrt(att.shape[-1])))
            maps = att.reshape(att.shape[0], att.shape[1], g, g)
            maps = maps / maps.flatten(2).amax(-1).clamp(min=1e-6)[..., None, None]
            f = f + torch.einsum("bkhw,bkc->bchw", self._fit(maps, f), self.paint(obj))
            gamma, beta = self.film(root).chunk(2, -1)
            f = f * (1 + gamma[..., None, None]) + beta[..., None, None]
        rest = list(self.blocks[1:])
        for blk in rest[:-1]:
            f = blk(f)
        if self.deep is not None:
            f = f + self.deep(f)  # the 1/8 context, before the last 1/4 block refines it
        if rest:
            f = rest[-1](f)
        u = F.pixel_shuffle(self.up(f), 2) + s
        if maps is not None and self.paint_half is not None:
            u = u + torch.einsum("bkhw,bkc->bchw", self._fit(maps, u), self.paint_half(obj))
        u = F.relu(u, inplace=True)
        r = F.pixel_shuffle(self.tail(u), 2)
        out = xp + r
        return out[..., :h, :w] if ph or pw else out


    @staticmethod
    def _fit(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(maps, size=like.shape[-2:], mode="bilinear", align_corners=False)


class Critic(nn.Module):
    """WGAN critic: strided convs, no normalisation (the gradient penalty needs none)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 1, 3, 1, 1),
        )

    def forward(self, x):
        return self.net(x - 0.5).mean((1, 2, 3))


# --------------------------------------------------------------------------- the model


class S3EDeblur(nn.Module):
    """Captioner + S3-tree + generator. ``cfg.semantic=False`` feeds a zero tree embedding."""

    def __init__(self, cfg: S3EConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or S3EConfig()
        self.captioner = Captioner(self.cfg)
        self.tree = TreeEmbed(self.cfg, self.captioner.state_dim)
        self.generator = Generator(self.cfg)

    def _embed(self, states, alphas, tokens, masks=None):
        obj, att, root = self.tree(states, alphas, tree_masks(tokens) if masks is None else masks)
        if not self.cfg.semantic:
            # the ablation: same network, the tree embedding is all zeros
            obj, att, root = torch.zeros_like(obj), torch.zeros_like(att), torch.zeros_like(root)
        return obj, att, root

    def forward(self, blurred: torch.Tensor, tokens: torch.Tensor, masks=None):
        """Training pass (teacher forcing): deblurred image and caption logits. ``masks`` are
        ``tree_masks(tokens)`` when the caller has them already (the data loader builds them
        on the CPU, so a GPU step needs no host round trip to parse captions)."""
        logits, states, alphas = self.captioner(blurred, tokens)
        out = self.generator(blurred, *self._embed(states, alphas, tokens, masks))
        return out, logits

    def training_pass(self, blurred: torch.Tensor, sharp: torch.Tensor, tokens: torch.Tensor, masks=None):
        """:meth:`forward` plus the caption logits of the sharp image and the object nodes'
        attention maps on the blurred one: (deblurred, logits of the blurred, logits of the
        sharp, maps (B, K, N) - the spatial features the tree carries, whatever ``semantic``).
        The captioner reads both images in one batch of 2B: it has no batch-dependent layer, so
        this is the same computation as two passes with half the decoder steps - and each
        decoder step is a dozen small kernels, which likely bound a GPU training step more than
        its arithmetic does (docs/deblur.md)."""
        n = blurred.shape[0]
        masks = tree_masks(tokens) if masks is None else masks
        logits, states, alphas = self.captioner(torch.cat([blurred, sharp]), torch.cat([tokens, tokens]))
        out = self.generator(blurred, *self._embed(states[:n], alphas[:n], tokens, masks))
        return out, logits[:n], logits[n:], masks["obj"] @ alphas[:n]

    @torch.no_grad()
    def deblur(self, blurred: torch.Tensor, caption: bool = True, mirror: bool = False):
        """Inference: (deblurred in [0,1], caption token ids or None).

        ``mirror`` (not in the paper): also deblur the left-right mirrored frame, with the
        caption the captioner reads from it, and average the two results (mirrored back) -
        a two-view self-ensemble at twice the cost. Mirroring is the one turn the shipped
        generator handles almost as well as the frame itself (docs/deblur.md, "Memorised
        photos"), so the two views' errors partly cancel. The caption returned is the
        unmirrored frame's."""
        if mirror:
            n = blurred.shape[0]
            both, toks = self.deblur(torch.cat([blurred, blurred.flip(-1)]), caption)
            return (both[:n] + both[n:].flip(-1)) / 2, None if toks is None else toks[:n]
        if not self.cfg.semantic and not caption:
            return self.generator(blurred, *self._zero(blurred)).clamp(0, 1), None
        toks, tree = self._greedy_tree(blurred)
        return self.generator(blurred, *tree).clamp(0, 1), toks

    def _greedy_tree(self, blurred: torch.Tensor):
        """Greedy caption tokens and the (obj, att, root) embedding of its tree."""
        toks, states, alphas = self.captioner.greedy(blurred)
        return toks, self._embed(states, alphas, toks)

    @torch.no_grad()
    def deblur_with_other_trees(self, blurred: torch.Tensor, shift: int = 1) -> torch.Tensor:
        """Inference in which image ``i`` of the batch is guided by the S3-tree (greedy caption,
        attention maps) of image ``i + shift`` (cyclically). Against :meth:`deblur` this
        measures whether the generator uses what the tree *says* about its image, or only
        that a tree is there (a learned constant would survive the swap)."""
        _, (obj, att, root) = self._greedy_tree(blurred)
        perm = torch.roll(torch.arange(blurred.shape[0], device=blurred.device), -shift)
        return self.generator(blurred, obj[perm], att[perm], root[perm]).clamp(0, 1)

    def _zero(self, like: torch.Tensor):
        b, n, d = like.shape[0], GRID ** 2, like.device
        return (torch.zeros(b, MAX_OBJECTS, self.cfg.node, device=d),
                torch.zeros(b, MAX_OBJECTS, n, device=d), torch.zeros(b, self.cfg.node, device=d))


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
class TrainConfig:
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

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        from vistream.models.data.blur import TRAINING_POOLS, training_batch

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
    import cv2

    cv2.setNumThreads(1)


_SIZE_FIELDS = ("c1", "c2", "blocks", "c3", "blocks8")
_GENERATOR_FIELDS = (*_SIZE_FIELDS, "paint_half")


def generator_sizes(spec: str) -> dict[str, int]:
    """``"C1,C2,BLOCKS"`` or ``"C1,C2,BLOCKS,C3,BLOCKS8"`` (a 1/8 level) as TrainConfig fields;
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


def _check_same_generator(config_path: Path, cfg: TrainConfig) -> None:
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

    def __init__(self, cfg: TrainConfig, semantic: bool, out_dir: Path, resume: bool, log) -> None:
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


def train(cfg: TrainConfig, out_dir: Path, resume: bool = True, progress: bool = True,
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
    from dataclasses import replace

    from tqdm import tqdm

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


# --------------------------------------------------------------------------- export / load


def export_weights(model: S3EDeblur, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Generator + captioner + tree weights as safetensors; the JSON manifest (format,
    config, vocabulary, anything in ``extra``) is stored in the file's metadata and written
    next to it as ``<file>.json``. No pickle anywhere."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "config": asdict(model.cfg), "vocab": list(VOCAB),
                "caption_size": CAPTION_SIZE, **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"manifest": json.dumps(manifest)})
    path.chmod(0o644)  # safetensors creates 0600 files; a shipped model must be readable
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(manifest, indent=2))
    return path


def load_weights(path: str | Path) -> tuple[S3EDeblur, dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if "manifest" not in meta:
        raise ValueError(f"{path} has no vistream manifest")
    manifest = json.loads(meta["manifest"])
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("vocab") != list(VOCAB):
        raise ValueError(f"{path}: caption vocabulary differs from this version's")
    model = S3EDeblur(S3EConfig(**manifest["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), manifest


def model_from_checkpoint(path: str | Path, semantic: bool | None = None) -> S3EDeblur:
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
