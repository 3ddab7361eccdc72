"""BNAS, binarized neural architecture search (docs/bnas.md): ``ops`` (the 1-bit operation
space), ``supernet`` (PC-DARTS partial-channel cells), ``reduction`` (performance-based operation
space reduction, UCB), ``bnas`` (the resumable search), ``genotype`` (its JSON form),
``network`` (the searched net), ``train`` / ``evaluate`` (training and the comparison with the
hand-made 1-bit ResNets), ``export`` (packed-runtime artifacts with a named fallback)."""
