"""S3E-Deblur: caption-guided deblurring (see :mod:`models.deblur.s3e` and docs/deblur.md)."""

from pathlib import Path

_WEIGHTS = Path(__file__).resolve().parent / "weights"

#: the trained models shipped with the package (docs/deblur.md, "Results" and "Fine-tuned on a
#: lent H200"). ``s3e`` and ``ablation`` are the defaults: the *large* generator (32,64,4 plus a 1/8
#: level of 4 blocks at 96 channels), 18.6-19.6 fps at 320x240 on one thread (target 15); the
#: *medium* (32,64,4, 23-29 fps, about 1 dB less) and *small* (32,48,3, trained on eight photos
#: only) stay for machines that need the speed.
SHIPPED_WEIGHTS = {"s3e": _WEIGHTS / "s3e-large.safetensors",
                   "ablation": _WEIGHTS / "ablation-large.safetensors",
                   "s3e-medium": _WEIGHTS / "s3e-medium.safetensors",
                   "ablation-medium": _WEIGHTS / "ablation-medium.safetensors",
                   "s3e-small": _WEIGHTS / "s3e-small.safetensors",
                   "ablation-small": _WEIGHTS / "ablation-small.safetensors"}
