import numpy as np

from envs import rng


def test_counter_rng_is_deterministic_uniform_and_keyed():
    seeds = rng.episode_seed(7, np.arange(1000), np.zeros(1000, int))
    u = rng.uniform(seeds, np.zeros(1000, np.uint64), rng.NOISE, 8)
    assert np.array_equal(u, rng.uniform(seeds, np.zeros(1000, np.uint64), rng.NOISE, 8))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    other = rng.uniform(seeds, np.ones(1000, np.uint64), rng.NOISE, 8)
    assert np.abs(u - other).mean() > 0.2  # another step, other numbers
    z = rng.normal(seeds, np.zeros(1000, np.uint64), rng.NOISE, 16)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
