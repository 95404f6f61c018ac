"""The portable generator: Philox4x32-10 known answers, Box-Muller statistics, determinism."""
import numpy as np
import pytest

from sdrt.runtime.noise import gaussian_noise, philox4x32, step_noise_stream


@pytest.mark.parametrize("counter, key, expected", [
    # Known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    words = philox4x32(np.array([counter], dtype=np.uint64), key)
    assert tuple(int(w) for w in words[0]) == expected


def test_noise_is_standard_normal():
    noise = gaussian_noise(42, (4, 4, 64, 64))
    assert noise.dtype == np.float32 and noise.shape == (4, 4, 64, 64)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert abs(((noise > 1.96).mean()) - 0.025) < 0.002


def test_same_seed_same_noise_and_streams_differ():
    a = gaussian_noise(7, (1, 4, 8, 8))
    np.testing.assert_array_equal(a, gaussian_noise(7, (1, 4, 8, 8)))
    assert not np.array_equal(a, gaussian_noise(8, (1, 4, 8, 8)))
    assert not np.array_equal(a, gaussian_noise(7, (1, 4, 8, 8), stream=step_noise_stream(0)))
    # A tensor's values are the prefix of the stream, whatever its shape.
    np.testing.assert_array_equal(gaussian_noise(7, (10,)), gaussian_noise(7, (2, 4, 8, 8)).reshape(-1)[:10])


def test_first_values_are_pinned():
    """Golden values: a C++ host implementing the documented algorithm must produce these."""
    values = gaussian_noise(42, (6,))
    u1 = (np.float64(philox4x32(np.array([[0, 0, 0, 0]], dtype=np.uint64), (42, 0))[0, 0]) + 1) / 2**32
    u2 = np.float64(philox4x32(np.array([[0, 0, 0, 0]], dtype=np.uint64), (42, 0))[0, 1]) / 2**32
    assert values[0] == np.float32(np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2))
    assert values[1] == np.float32(np.sqrt(-2 * np.log(u1)) * np.sin(2 * np.pi * u2))


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seed must be an integer"):
        gaussian_noise(-1, (2,))
