"""S3E-Deblur: caption-guided deblurring (see :mod:`models.deblur.s3e` and docs/deblur.md)."""

from pathlib import Path

#: the small trained models shipped with the package (``vistream train deblur --export``)
SHIPPED_WEIGHTS = {"s3e": Path(__file__).resolve().parent / "weights" / "s3e-small.safetensors",
                   "ablation": Path(__file__).resolve().parent / "weights" / "ablation-small.safetensors"}
