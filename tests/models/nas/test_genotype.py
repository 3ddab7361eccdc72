"""Genotype JSON round trip and its errors (models/nas/genotype.py)."""

from __future__ import annotations

import json

import pytest

from vistream.models.nas.genotype import Genotype, GenotypeError, load_genotype, save_genotype

CELL = [["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_3x3", 0], ["max_pool_3x3", 2],
        ["sep_conv_5x5", 1], ["avg_pool_3x3", 3], ["dil_conv_5x5", 4], ["skip_connect", 0]]
GENO = {"normal": CELL, "normal_concat": [2, 3, 4, 5], "reduce": CELL,
        "reduce_concat": [2, 3, 4, 5]}


def test_round_trip_through_a_file(tmp_path):
    g = Genotype.from_dict({**GENO, "reduce": [["max_pool_3x3", 1], ["skip_connect", 0]] + CELL[2:]})
    save_genotype(g, tmp_path / "g.json")
    back = load_genotype(tmp_path / "g.json")
    assert back == g and back.to_dict() == g.to_dict()
    save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(tmp_path) == g  # a search folder names its genotype.json
    assert back.steps == 4 and "n2<-sep_conv_3x3(0)" in back.describe()


@pytest.mark.parametrize("patch, words", [
    ({"normal": [["conv_7x7", 0], ["skip_connect", 1]] + CELL[2:]}, "unknown operation"),
    ({"normal": [["none", 0], ["skip_connect", 1]] + CELL[2:]}, "unknown operation"),
    ({"normal": [["sep_conv_3x3", 2], ["skip_connect", 1]] + CELL[2:]}, "input 0..1"),
    ({"normal": CELL[:3]}, "even"),
    ({"reduce_concat": [1, 2]}, "node indices"),
    ({"normal": CELL[:6], "normal_concat": [2, 3, 4]}, "same number of nodes"),
])
def test_bad_genotypes_fail_with_a_reason(patch, words):
    with pytest.raises(GenotypeError, match=words):
        Genotype.from_dict({**GENO, **patch})


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(GenotypeError, match="cannot read"):
        load_genotype(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"normal": CELL}))
    with pytest.raises(GenotypeError, match="misses"):
        load_genotype(tmp_path / "partial.json")
