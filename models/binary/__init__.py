"""1-bit networks: shared layers (:mod:`models.binary.layers`), one module per training method,
and the bit-packed CPU runtime."""
