"""S3E-Deblur: caption-guided deblurring (see :mod:`models.deblur.s3e` and docs/deblur.md)."""
