"""Interpretable network decoupling (Li et al., arXiv 1906.01166): controlling modules gate the
filters of a trained backbone per input; the gates form per-class calculation paths used for
interpretation, acceleration (skip inactive filters) and adversarial detection. See
docs/decoupling.md."""
