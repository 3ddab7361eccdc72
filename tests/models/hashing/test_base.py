import numpy as np
import pytest

from vistream.models.hashing.base import HashModel, hamming_distances, pack_bits, unpack_bits
from vistream.models.hashing.baselines import LSH


def test_pack_unpack_and_hamming():
    rng = np.random.default_rng(0)
    bits = rng.random((5, 24)) > 0.5
    codes = pack_bits(bits)
    assert codes.shape == (5, 3) and codes.dtype == np.uint8
    assert np.array_equal(unpack_bits(codes, 24), bits)
    d = hamming_distances(codes, codes)
    assert np.array_equal(d, (bits[:, None, :] != bits[None, :, :]).sum(-1))


def test_lsh_encode_save_load(tmp_path):
    X = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    m = LSH(n_bits=32, seed=3).partial_fit(X)
    assert m.version == 1 and m.encode(X).shape == (50, 4)
    back = HashModel.load(m.save(tmp_path / "m.npz"))
    assert isinstance(back, LSH) and back.version == 1
    assert np.array_equal(back.encode(X), m.encode(X))
    with pytest.raises(ValueError, match="multiple of 8"):
        LSH(n_bits=12)
    with pytest.raises(ValueError, match="expects 16"):
        m.encode(X[:, :8])
