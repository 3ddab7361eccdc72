"""``vistream serve`` without a features stage in its config embeds image queries with a shipped
backbone (``--backbone zoo:NAME``) or an artifact file, through a features stage of its own."""

from __future__ import annotations

import numpy as np

from vistream.models.zoo import DEFAULT_ARTIFACT, load_index
from vistream.pipeline.serve import StageExtractor, query_extractor


def test_query_extractor_runs_a_shipped_artifact():
    entry = load_index()["artifacts"][DEFAULT_ARTIFACT.removeprefix("zoo:")]
    ext = query_extractor(None, None, DEFAULT_ARTIFACT)
    assert isinstance(ext, StageExtractor)
    assert ext.model_id == entry["model_id"] and ext.dim == entry["num_features"]
    img = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    f = ext.extract([img, img])
    assert f.shape == (2, entry["num_features"]) and np.array_equal(f[0], f[1])
    assert query_extractor(None, None, "none") is None
