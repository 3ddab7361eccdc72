import numpy as np

from vistream.models.data.blur import make_sample
from vistream.models.deblur.evaluate import (
    masked_psnr,
    object_region,
    paired_gain,
    psnr,
    richardson_lucy,
    save_grid,
    ssim,
    wiener,
)


def test_classical_deconvolution_with_the_true_kernel_helps_on_mild_blur():
    s = make_sample(7, "mild", 64, 64)
    base = psnr(s.sharp, s.blurred)
    assert psnr(s.sharp, wiener(s.blurred, s.kernel, 0.01)) > base
    assert psnr(s.sharp, richardson_lucy(s.blurred, s.kernel, 20)) > base
    assert ssim(s.sharp, s.sharp) == 1.0


def test_grid_is_written(tmp_path):
    import cv2

    im = [np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)] * 2
    path = save_grid({"severe": {"sharp": im, "blurred": im, "s3e": im},
                      "mild": {"sharp": im, "blurred": im, "s3e": im}}, tmp_path / "g.png")
    grid = cv2.imread(str(path))
    assert grid.shape == (2 * (14 + 2 * 36), 3 * 36, 3)


def test_object_regions_hold_the_objects_and_their_psnr_is_the_psnr_of_those_pixels():
    s = make_sample(3, "severe")
    mask = object_region(s, margin=2)
    assert s.objects and 0 < mask.mean() < 0.6
    for o in s.objects:
        assert mask[int(round(o.cy)), int(round(o.cx))]
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    far = np.all([np.hypot(xx - o.cx, yy - o.cy) > o.r + 2 for o in s.objects], axis=0)
    assert not (mask & far).any()
    # over the whole frame it is the ordinary PSNR; over a region, that region's error alone
    everything = np.ones_like(mask)
    assert abs(masked_psnr(s.sharp, s.blurred, everything) - psnr(s.sharp, s.blurred)) < 1e-6
    fixed = s.blurred.copy()
    fixed[~mask] = s.sharp[~mask]
    assert abs(masked_psnr(s.sharp, fixed, mask) - masked_psnr(s.sharp, s.blurred, mask)) < 1e-9
    assert masked_psnr(s.sharp, fixed, mask) < psnr(s.sharp, fixed)


def test_synthetic_evaluation_reports_what_the_tree_content_is_worth():
    import torch

    from vistream.models.deblur.evaluate import evaluate_synthetic
    from vistream.models.deblur.s3e import S3EConfig, S3EDeblur

    torch.manual_seed(0)
    small = dict(c1=8, c2=12, blocks=2, enc=16, hidden=32, emb=8, node=16)
    models = {"ablation_no_semantic": S3EDeblur(S3EConfig(**small, semantic=False)).eval(),
              "s3e": S3EDeblur(S3EConfig(**small)).eval()}
    gen = models["s3e"].generator
    for p in gen.parameters():  # the tail starts at zero: wake it up
        p.data.add_(0.05 * torch.randn_like(p))
    for p in [*gen.film.parameters(), *gen.paint.parameters()]:  # and make the tree matter
        p.data.add_(2.0 * torch.randn_like(p))
    report, examples = evaluate_synthetic(models, n=3, levels=("severe",), tune_pairs=1, progress=False)
    sev = report["severe"]
    assert set(sev["methods"]) >= {"blurred", "wiener_true_kernel", "richardson_lucy_true_kernel", "s3e"}
    tree = sev["tree_content"]
    assert tree["psnr_own_trees"] == sev["methods"]["s3e"]["psnr"]
    assert tree["psnr_other_scenes_trees"] != tree["psnr_own_trees"]
    assert tree["gain_db"] == round(tree["psnr_own_trees"] - tree["psnr_other_scenes_trees"], 3)
    paired = sev["semantic_gain_per_scene"]
    mean_gap = sev["methods"]["s3e"]["psnr"] - sev["methods"]["ablation_no_semantic"]["psnr"]
    assert abs(paired["mean_db"] - mean_gap) < 2e-3 and paired["se_db"] >= 0
    assert len(examples["severe"]["sharp"]) == 3
    att = sev["attention_on_objects"]
    assert 0 <= att["share_on_own_object"] <= 1 and 0 < att["uniform_map_share"] < 0.5
    # photos training never sees: scored the same way, classical methods tuned on severe blur
    unseen, _ = evaluate_synthetic(models, n=2, levels=("severe-unseen",), tune_pairs=1, progress=False)
    assert unseen["severe-unseen"]["classical_params"] == sev["classical_params"]
    assert unseen["severe-unseen"]["methods"]["blurred"]["psnr"] != sev["methods"]["blurred"]["psnr"]


def test_paired_gain_is_the_mean_scene_by_scene_difference_with_its_standard_error():
    rng = np.random.default_rng(0)
    sharp = [rng.random((16, 16, 3)) for _ in range(4)]
    noisy = [s + rng.normal(0, 0.1, s.shape) for s in sharp]
    # halving the error adds 20*log10(2) = 6.02 dB on every scene: no spread, all scenes ahead
    halved = [s + 0.5 * (n - s) for s, n in zip(sharp, noisy)]
    g = paired_gain(sharp, halved, noisy)
    assert abs(g["mean_db"] - 6.021) < 1e-3 and g["se_db"] == 0 and g["share_of_scenes_ahead"] == 1
    # scene-dependent gains: their mean, and their standard deviation over sqrt(n)
    scaled = [s + f * (n - s) for s, n, f in zip(sharp, noisy, (0.5, 1.0, 2.0, 1.0))]
    d = np.array([20 * np.log10(2), 0, -20 * np.log10(2), 0])
    g = paired_gain(sharp, scaled, noisy)
    assert abs(g["mean_db"] - d.mean()) < 1e-3
    assert abs(g["se_db"] - d.std(ddof=1) / 2) < 1e-3 and g["share_of_scenes_ahead"] == 0.25
