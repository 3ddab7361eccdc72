"""S3E-Deblur: caption-guided deblurring (see :mod:`models.deblur.s3e` and docs/deblur.md)."""

from pathlib import Path

_WEIGHTS = Path(__file__).resolve().parent / "weights"

#: the trained models shipped with the package (docs/deblur.md, "Results"). ``s3e`` and
#: ``ablation`` are the defaults: the medium generator (32,64,4), +0.55 dB over the small one on
#: the severe held-out set at about 60% of its speed (18-20 fps at 320x240 on one thread, above the
#: 15 fps target); the small generator (32,48,3, 29-34 fps) stays for machines that need the speed.
SHIPPED_WEIGHTS = {"s3e": _WEIGHTS / "s3e-medium.safetensors",
                   "ablation": _WEIGHTS / "ablation-medium.safetensors",
                   "s3e-small": _WEIGHTS / "s3e-small.safetensors",
                   "ablation-small": _WEIGHTS / "ablation-small.safetensors"}
