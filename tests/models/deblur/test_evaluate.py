import numpy as np

from models.deblur.data import make_sample
from models.deblur.evaluate import psnr, richardson_lucy, save_grid, ssim, wiener


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
