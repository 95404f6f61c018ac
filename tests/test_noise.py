"""The portable generator: Philox4x32-10 known answers, Box-Muller statistics, determinism."""
import math

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


def _reference_normals(seed: int, stream: int, count: int) -> list[float]:
    """The documented algorithm, written again with Python ints and math, one block at a time:
    an independent implementation a C++ host would mirror."""
    def philox(counter, key):
        c, k = list(counter), list(key)
        for round_index in range(10):
            p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
            c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
            if round_index < 9:
                k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
        return c

    values: list[float] = []
    block = 0
    while len(values) < count:
        words = philox((block & 0xFFFFFFFF, block >> 32, stream & 0xFFFFFFFF, stream >> 32),
                       (seed & 0xFFFFFFFF, seed >> 32))
        for a, b in ((words[0], words[1]), (words[2], words[3])):
            radius = math.sqrt(-2.0 * math.log((a + 1) / 2**32))
            values += [radius * math.cos(2 * math.pi * b / 2**32), radius * math.sin(2 * math.pi * b / 2**32)]
        block += 1
    return values[:count]


@pytest.mark.parametrize("seed, stream", [(42, 0), (2**40 + 7, step_noise_stream(3))])
def test_values_follow_the_documented_algorithm(seed, stream):
    """What a C++ host implementing the module docstring must produce, float32 for float32."""
    ours = gaussian_noise(seed, (3, 5), stream=stream).reshape(-1)
    expected = np.array(_reference_normals(seed, stream, 15), dtype=np.float32)
    np.testing.assert_array_equal(ours, expected)


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seed must be an integer"):
        gaussian_noise(-1, (2,))
