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

This module is the network and its weight files; the losses, the co-training loop and its
checkpoints are :mod:`models.deblur.train`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
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


# --------------------------------------------------------------------------- export / load


def export_weights(model: S3EDeblur, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Generator + captioner + tree weights as safetensors; the JSON manifest (format,
    config, vocabulary, anything in ``extra``) is stored in the file's metadata and written
    next to it as ``<file>.json``. No pickle anywhere."""
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
    """The model of a weights file written by :func:`export_weights`, and its manifest."""
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
