"""S3E-Deblur's training (models/deblur/train.py): the losses, the lockstep S3E/ablation runs,
starting from and growing exported weights, checkpoints and their generator sizes."""

import numpy as np
import pytest
import torch

from vistream.models.data.blur import TRAINING_POOLS, training_batch
from vistream.models.deblur.s3e import Critic, S3EConfig, S3EDeblur, export_weights, load_weights, tree_masks
from vistream.models.deblur.train import LossWeights, critic_loss, feature_consistency_loss, generator_losses

torch.set_num_threads(1)  # the machine is shared: oversubscribed threads only slow tests down
SMALL = dict(c1=8, c2=12, blocks=2, enc=16, hidden=32, emb=8, node=16)


def _batch(n=2, seed=0):
    b = training_batch(np.random.default_rng(seed), n, 48)
    return (torch.from_numpy(b["blurred"]), torch.from_numpy(b["sharp"]), torch.from_numpy(b["tokens"]))


def test_every_loss_term_is_finite_and_falls_on_a_tiny_overfit_run():
    torch.manual_seed(0)
    model, critic = S3EDeblur(S3EConfig(**SMALL)), Critic()
    blurred, sharp, tokens = _batch()
    maps = torch.from_numpy(training_batch(np.random.default_rng(0), 2, 48)["object_maps"])
    w = LossWeights(content=1, feature=0.3, adversarial=0.3, caption=0.1, grounding=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = last = None
    for _ in range(30):
        total, terms, out = generator_losses(model, critic, blurred, sharp, tokens, w, object_maps=maps)
        assert "grounding" in terms
        assert all(torch.isfinite(v) for v in terms.values())
        if first is None:
            first, out_first = {k: v.item() for k, v in terms.items()}, out.detach()
        last = {k: v.item() for k, v in terms.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    # The feature term is measured by the captioner's encoder, which is itself learning (its
    # feature scale grows as it learns to caption), so compare both outputs under the final one.
    with torch.no_grad():
        first["feature"] = feature_consistency_loss(model.captioner, out_first, sharp).item()
        last["feature"] = feature_consistency_loss(model.captioner, out.detach(), sharp).item()
    for k in first:
        assert last[k] < first[k], (k, first[k], last[k])
    # the critic's own loss (Wasserstein estimate + gradient penalty) falls too
    fake = out.detach()
    copt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    closses = []
    for _ in range(20):
        loss, cterms = critic_loss(critic, sharp, fake, w)
        assert all(torch.isfinite(v) for v in cterms.values())
        closses.append(loss.item())
        copt.zero_grad()
        loss.backward()
        copt.step()
    assert np.mean(closses[-5:]) < np.mean(closses[:5])


def test_grounding_loss_prefers_attention_on_the_object_and_skips_absent_ones():
    from vistream.models.deblur.train import grounding_loss

    target = torch.zeros(1, 2, 4)
    target[0, 0, :2] = 0.5                     # object 0 covers cells 0 and 1; object 1 absent
    on = torch.tensor([[[0.45, 0.45, 0.05, 0.05], [0.25] * 4]])
    off = torch.tensor([[[0.05, 0.05, 0.45, 0.45], [0.0, 0.0, 0.0, 1.0]]])
    assert grounding_loss(on, target) < grounding_loss(off, target)
    assert torch.isclose(grounding_loss(on, target), -torch.log(torch.tensor(0.45)))
    assert grounding_loss(on, torch.zeros(1, 2, 4)) == 0


def test_training_batches_are_a_function_of_seed_and_step():
    from vistream.models.deblur.train import DeblurTrainConfig, TrainingBatches

    cfg = DeblurTrainConfig(steps=10, batch=2, size=32, seed=4)
    item = TrainingBatches(cfg)[7]
    again = training_batch(np.random.default_rng([4, 7]), 2, 32, cfg.severe_fraction, cfg.augment,
                           TRAINING_POOLS[cfg.photos])
    assert np.array_equal(item["blurred"].numpy(), again["blurred"])
    assert torch.equal(item["masks"]["obj"], tree_masks(torch.from_numpy(again["tokens"]))["obj"])
    assert not torch.equal(TrainingBatches(cfg)[8]["blurred"], item["blurred"])


def test_lockstep_pair_trains_s3e_and_ablation_and_resumes_together(tmp_path):
    import json

    from vistream.models.deblur.train import DeblurTrainConfig, model_from_checkpoint, train

    cfg = DeblurTrainConfig(steps=4, batch=2, size=32, checkpoint_every=2, workers=1)
    res = train(cfg, tmp_path / "s3e", progress=False, ablation_dir=tmp_path / "abl", log=lambda m: None)
    assert res["step"] == 4 and [h["step"] for h in res["ablation"]["history"]] == [2, 4]
    assert json.loads((tmp_path / "abl" / "config.json").read_text())["semantic"] is False
    s3e = model_from_checkpoint(tmp_path / "s3e" / "checkpoint.pt")
    abl = model_from_checkpoint(tmp_path / "abl" / "checkpoint.pt")
    assert s3e.cfg.semantic and not abl.cfg.semantic
    # same start, same batches, different embedding: the trained weights have parted
    assert not torch.equal(s3e.generator.head.weight, abl.generator.head.weight)

    cfg = DeblurTrainConfig(steps=6, batch=2, size=32, checkpoint_every=2)
    logs: list[str] = []
    res = train(cfg, tmp_path / "s3e", progress=False, ablation_dir=tmp_path / "abl", log=logs.append)
    assert res["step"] == 6 and sum("resumed" in m for m in logs) == 2
    (tmp_path / "s3e" / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="different steps"):
        train(cfg, tmp_path / "s3e", progress=False, ablation_dir=tmp_path / "abl", log=logs.append)


def test_a_run_can_start_from_exported_weights_of_its_own_kind_and_size(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, train

    torch.manual_seed(3)
    small = dict(c1=8, c2=12, blocks=2)
    start = S3EDeblur(S3EConfig(**small))  # DeblurTrainConfig builds the default captioner
    path = str(export_weights(start, tmp_path / "start.safetensors"))
    cfg = DeblurTrainConfig(steps=1, batch=1, size=32, lr=0.0, critic_lr=0.0, init=path, **small)
    logs: list[str] = []
    train(cfg, tmp_path / "run", progress=False, log=logs.append)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert any("starts from" in m for m in logs)
    assert all(torch.equal(state[k], v) for k, v in start.state_dict().items())  # lr 0: unchanged
    with pytest.raises(ValueError, match="generator of size"):
        train(DeblurTrainConfig(steps=1, batch=1, size=32, init=path, c1=8, c2=16, blocks=2),
              tmp_path / "other", progress=False, log=logs.append)
    with pytest.raises(ValueError, match="S3E weights"):
        train(DeblurTrainConfig(steps=1, batch=1, size=32, semantic=False, ablation_init=path, **small),
              tmp_path / "abl", progress=False, log=logs.append)


GROW_BASE = dict(c1=8, c2=12, blocks=2)


def _trained_looking_start(tmp_path, seed: int) -> tuple[S3EDeblur, str]:
    """A small S3E whose generator is not the identity (its tail is no longer zero), exported."""
    torch.manual_seed(seed)
    start = S3EDeblur(S3EConfig(**GROW_BASE)).eval()
    for p in start.generator.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return start, str(export_weights(start, tmp_path / "start.safetensors"))


def test_a_half_resolution_paint_starts_at_zero_and_then_carries_the_tree(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, model_from_checkpoint, train

    start, path = _trained_looking_start(tmp_path, 4)
    cfg = DeblurTrainConfig(steps=3, batch=2, size=32, lr=1e-2, init=path, paint_half=True, **GROW_BASE)
    train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    tuned = model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert tuned.cfg.paint_half and tuned.generator.paint_half.weight.abs().sum() > 0  # it learned
    # a fresh paint is zero: the start's output is unchanged by adding it
    grown = S3EDeblur(S3EConfig(**GROW_BASE, paint_half=True)).eval()
    grown.load_state_dict(start.state_dict(), strict=False)
    blurred, _, _ = _batch(2)
    assert torch.allclose(grown.deblur(blurred)[0], start.deblur(blurred)[0])
    again, _ = load_weights(export_weights(tuned, tmp_path / "tuned.safetensors"))
    assert again.cfg.paint_half
    assert torch.equal(again.deblur(blurred)[0], tuned.deblur(blurred)[0])


def test_a_1_8_level_grows_onto_weights_without_it_and_starts_as_the_start(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, model_from_checkpoint, train

    start, path = _trained_looking_start(tmp_path, 5)
    blurred, _, _ = _batch(2)
    grown = S3EDeblur(S3EConfig(**GROW_BASE, c3=16, blocks8=1)).eval()
    grown.load_state_dict(start.state_dict(), strict=False)
    assert torch.allclose(grown.deblur(blurred)[0], start.deblur(blurred)[0], atol=1e-6)
    logs: list[str] = []
    cfg = DeblurTrainConfig(steps=3, batch=2, size=32, lr=1e-2, init=path, c3=16, blocks8=1, **GROW_BASE)
    train(cfg, tmp_path / "run", progress=False, log=logs.append)
    assert any("1/8 level added" in m for m in logs)
    tuned = model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert tuned.cfg.c3 == 16 and tuned.generator.deep[-2].weight.abs().sum() > 0  # it learned
    # growing only adds the 1/8 level: another size at 1/4 is still refused
    with pytest.raises(ValueError, match="generator of size"):
        train(DeblurTrainConfig(steps=1, batch=1, size=32, init=path, c1=8, c2=16, blocks=2, c3=16,
                          blocks8=1), tmp_path / "other", progress=False, log=logs.append)


def test_fit_schedule_shortens_the_run_to_the_time_budget(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, train

    cfg = DeblurTrainConfig(steps=100_000, batch=1, size=32, checkpoint_every=10_000)
    logs: list[str] = []
    res = train(cfg, tmp_path, progress=False, max_seconds=20, fit_schedule=True, log=logs.append)
    assert any("schedule shortened" in m for m in logs)
    # the cosine schedule ran to its (shortened) end instead of being cut off by the clock
    assert 60 < res["steps"] < 100_000 and res["step"] == res["steps"]
    assert res["history"][-1]["step"] == res["steps"]


def test_a_larger_generator_trains_exports_and_refuses_resume_at_another_size(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, model_from_checkpoint, train

    cfg = DeblurTrainConfig(steps=2, batch=1, size=32, checkpoint_every=2, c1=16, c2=24, blocks=4)
    train(cfg, tmp_path, progress=False, log=lambda m: None)
    model = model_from_checkpoint(tmp_path / "checkpoint.pt")
    assert (model.cfg.c1, model.cfg.c2, model.cfg.blocks) == (16, 24, 4)
    assert len(model.generator.blocks) == 4
    path = export_weights(model, tmp_path / "w.safetensors")
    loaded, manifest = load_weights(path)
    assert manifest["config"]["c2"] == 24 and loaded.generator.down.out_channels == 24

    from dataclasses import replace

    with pytest.raises(ValueError, match="generator of size"):
        train(replace(cfg, steps=4, c2=32), tmp_path, progress=False, log=lambda m: None)


def test_a_generator_with_a_one_eighth_level_keeps_any_frame_size_and_its_config(tmp_path):
    from vistream.models.deblur.train import DeblurTrainConfig, model_from_checkpoint, train

    torch.manual_seed(0)
    model = S3EDeblur(S3EConfig(**(SMALL | dict(c3=20, blocks8=2)))).eval()
    assert model.generator.deep is not None
    x = torch.rand(1, 3, 37, 53)  # not a multiple of 8: padded inside, cropped back
    out, _ = model.deblur(x)
    assert out.shape == x.shape
    # the zero-initialised tail makes an untrained generator the identity
    assert torch.allclose(out, x.clamp(0, 1), atol=1e-6)

    cfg = DeblurTrainConfig(steps=2, batch=1, size=32, checkpoint_every=2, c1=8, c2=12, blocks=2,
                      c3=20, blocks8=2)
    train(cfg, tmp_path, progress=False, log=lambda m: None)
    rebuilt = model_from_checkpoint(tmp_path / "checkpoint.pt")
    assert (rebuilt.cfg.c3, rebuilt.cfg.blocks8) == (20, 2)
    loaded, manifest = load_weights(export_weights(rebuilt, tmp_path / "w.safetensors"))
    assert manifest["config"]["blocks8"] == 2 and loaded.generator.deep is not None
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(loaded.deblur(x)[0], rebuilt.deblur(x)[0])


def test_the_joint_captioner_pass_gives_the_losses_of_separate_passes():
    from vistream.models.deblur.train import caption_loss, content_loss

    torch.manual_seed(0)
    model, critic = S3EDeblur(S3EConfig(**SMALL)), Critic()
    blurred, sharp, tokens = _batch(n=3)
    w = LossWeights()
    total, terms, out = generator_losses(model, critic, blurred, sharp, tokens, w)
    # the same step written as two captioner passes
    ref_out, logits = model(blurred, tokens)
    sharp_logits, _, _ = model.captioner(sharp, tokens)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["caption_blurred"], caption_loss(logits, tokens), **close)
    torch.testing.assert_close(terms["caption_sharp"], caption_loss(sharp_logits, tokens), **close)
    torch.testing.assert_close(terms["content"], content_loss(ref_out, sharp), rtol=1e-5, atol=1e-6)


def test_generator_sizes_read_three_or_five_positive_integers():
    from vistream.models.deblur.train import generator_sizes

    assert generator_sizes("32,48,3") == dict(c1=32, c2=48, blocks=3, c3=0, blocks8=0)
    assert generator_sizes("32,64,4,96,4") == dict(c1=32, c2=64, blocks=4, c3=96, blocks8=4)
    for bad in ("32,48", "32,48,3,96", "32,0,3", "32,x,3", ""):
        with pytest.raises(ValueError, match="C1,C2,BLOCKS"):
            generator_sizes(bad)
