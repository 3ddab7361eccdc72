import numpy as np
import pytest
import torch

from vistream.models.data.blur import (
    MAX_LEN,
    WORD2ID,
    encode_caption,
    make_sample,
    training_batch,
)
from vistream.models.deblur.evaluate import bleu4
from vistream.models.deblur.s3e import (
    S3EConfig,
    S3EDeblur,
    export_weights,
    load_weights,
    parse_tree,
    tree_masks,
)

torch.set_num_threads(1)  # the machine is shared: oversubscribed threads only slow tests down
SMALL = dict(c1=8, c2=12, blocks=2, enc=16, hidden=32, emb=8, node=16)


def test_parse_tree_structure():
    words = ["small", "red", "circle", "top", "left", "left_of", "big", "blue", "square", "bottom", "right"]
    root = parse_tree(encode_caption(words))
    objs = [c for c in root.children if c.kind == "object"]
    rels = [c for c in root.children if c.kind == "relation"]
    assert [o.words for o in objs] == [words[:5], words[6:]]
    assert [c.kind for c in objs[0].children] == ["attribute", "position"]
    assert objs[1].children[0].words == ["big", "blue", "square"]
    assert objs[1].children[1].words == ["bottom", "right"]
    assert len(rels) == 1 and rels[0].words == ["left_of"] and rels[0].children == objs
    # malformed predictions still parse (no crash, bounded objects)
    junk = [WORD2ID["left_of"], WORD2ID["red"], WORD2ID["above"], WORD2ID["above"]] + \
        [WORD2ID["big"]] * 12 + [WORD2ID["below"], WORD2ID["blue"]]
    t = parse_tree(junk)
    assert len([c for c in t.children if c.kind == "object"]) <= 3
    m = tree_masks(torch.tensor([junk[:MAX_LEN]]))
    assert torch.allclose(m["obj"].sum(-1), m["present"])


def _batch(n=2, seed=0):
    b = training_batch(np.random.default_rng(seed), n, 48)
    return (torch.from_numpy(b["blurred"]), torch.from_numpy(b["sharp"]), torch.from_numpy(b["tokens"]))


def _perturbed(semantic):
    torch.manual_seed(1)
    m = S3EDeblur(S3EConfig(**SMALL, semantic=semantic)).eval()
    for p in m.generator.parameters():  # the tail starts at zero (identity); wake it up
        p.data.add_(0.05 * torch.randn_like(p))
    return m


def test_tree_embedding_reaches_the_generator_and_ablation_ignores_it():
    blurred, _, tokens = _batch()
    other = torch.from_numpy(np.stack([encode_caption(["big", "black", "triangle", "bottom", "right"])] * 2))
    with torch.no_grad():
        sem = _perturbed(True)
        assert not torch.allclose(sem(blurred, tokens)[0], sem(blurred, other)[0])
        abl = _perturbed(False)
        assert torch.allclose(abl(blurred, tokens)[0], abl(blurred, other)[0])
        assert sum(p.numel() for p in sem.parameters()) == sum(p.numel() for p in abl.parameters())


def test_other_scenes_trees_change_the_output_and_a_zero_shift_does_not():
    blurred, _, _ = _batch(3)
    sem = _perturbed(True)
    own, _ = sem.deblur(blurred)
    assert torch.allclose(sem.deblur_with_other_trees(blurred, shift=0), own)
    swapped = sem.deblur_with_other_trees(blurred, shift=1)
    assert not torch.allclose(swapped, own)
    # image 0 is guided by image 1's tree: exactly what deblurring with that tree gives
    toks, states, alphas = sem.captioner.greedy(blurred)
    obj, att, root = sem._embed(states, alphas, toks)
    expect = sem.generator(blurred[:1], obj[1:2], att[1:2], root[1:2]).clamp(0, 1)
    assert torch.allclose(swapped[:1], expect, atol=1e-6)


def test_deblur_any_size_and_export_round_trip(tmp_path):
    m = _perturbed(True)
    x = torch.rand(2, 3, 37, 50)
    y, toks = m.deblur(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert toks.shape[0] == 2
    path = export_weights(m, tmp_path / "w.safetensors", extra={"model_id": "t"})
    assert b"pickle" not in path.read_bytes()[:200] and (tmp_path / "w.safetensors.json").exists()
    m2, manifest = load_weights(path)
    assert manifest["model_id"] == "t" and manifest["config"]["c1"] == 8
    y2, toks2 = m2.deblur(x)
    assert torch.allclose(y, y2) and torch.equal(toks, toks2)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_weights(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="manifest"):
        load_weights(tmp_path / "plain.safetensors")


def test_bleu4():
    ref = make_sample(3).caption
    assert bleu4([ref], [ref]) == pytest.approx(1.0)
    assert bleu4([ref], [[]]) == 0.0
    worse = ref[:2] + ["black"] + ref[3:]
    assert 0 < bleu4([ref], [worse]) < 1
    assert bleu4([ref], [ref[:3]]) < bleu4([ref], [worse])  # brevity penalty


def test_object_maps_cover_each_captioned_object_in_caption_order():
    from vistream.models.data.blur import GRID, MAX_OBJECTS, object_maps

    s = make_sample(11, "severe")
    maps = object_maps(s.objects, 96, 96)
    assert maps.shape == (MAX_OBJECTS, GRID * GRID)
    objs = sorted(s.objects, key=lambda o: o.cx)
    for j, o in enumerate(objs):
        assert abs(maps[j].sum() - 1) < 1e-6
        assert maps[j].reshape(GRID, GRID)[int(o.cy / 8), int(o.cx / 8)] > 0  # the centre's cell
        far = np.hypot((np.arange(GRID) + 0.5) * 8 - o.cx, (np.arange(GRID)[:, None] + 0.5) * 8 - o.cy)
        assert maps[j].reshape(GRID, GRID)[far > o.r + 8].sum() == 0
    assert not maps[len(objs):].any()


def test_weights_from_before_the_one_eighth_level_load_without_it():
    from vistream.models.deblur import SHIPPED_WEIGHTS

    model, manifest = load_weights(SHIPPED_WEIGHTS["s3e-small"])
    assert "c3" not in manifest["config"] and model.generator.deep is None


def test_mirror_ensemble_averages_the_frame_and_its_mirror_image_and_keeps_the_frames_caption():
    m = _perturbed(True)
    x = torch.rand(2, 3, 24, 40)
    plain, toks = m.deblur(x)
    mirrored, _ = m.deblur(x.flip(-1))
    both, toks_both = m.deblur(x, mirror=True)
    assert torch.allclose(both, (plain + mirrored.flip(-1)) / 2, atol=1e-6)
    assert not torch.allclose(both, plain)  # the mirrored view really contributes
    assert torch.equal(toks_both, toks)
    abl = _perturbed(False)
    y, none = abl.deblur(x, caption=False, mirror=True)
    assert none is None and y.shape == x.shape
