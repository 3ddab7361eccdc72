import math

import pytest

from vistream.models.stats import paired_differences


def test_paired_differences_give_mean_standard_error_and_counts():
    g = paired_differences([-1, 0, 2, 3])
    assert g["n"] == 4 and g["mean"] == 1.0
    sd = math.sqrt(((-2) ** 2 + 1 + 1 + 4) / 3)
    assert g["se"] == pytest.approx(sd / 2)
    assert (g["ahead"], g["tied"], g["behind"]) == (2, 1, 1)
    assert paired_differences([0.5])["se"] is None
    with pytest.raises(ValueError):
        paired_differences([])
