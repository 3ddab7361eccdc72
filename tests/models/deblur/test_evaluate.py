import numpy as np

from models.deblur.data import make_sample
from models.deblur.evaluate import masked_psnr, object_region, psnr, richardson_lucy, save_grid, ssim, wiener


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
