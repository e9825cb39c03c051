"""Counter-based random numbers: a pure function of (episode seed, step, stream).

Every random draw an env makes (scene layout, hidden parameters, noise, occlusion, perturbations) is
hashed from the episode's seed and the step counter instead of being pulled from a stateful
generator. So an env's whole future is fixed by its saved state: ``set_state`` on another instance
continues identically, and an episode can be regenerated from its seed alone.
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Streams keep independent uses apart; values are arbitrary but fixed forever (datasets depend on them).
SCENE, HIDDEN, OCCLUSION, NOISE, PERTURB, EPISODE = 11, 23, 37, 41, 53, 67


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixing map of uint64 arrays."""
    with np.errstate(over="ignore"):
        z = (x + _GOLDEN) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * _M1) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * _M2) & _MASK
        return z ^ (z >> np.uint64(31))


def hash_keys(*parts) -> np.ndarray:
    """Mix integer arrays (broadcast together) into one uint64 key per element."""
    key = np.uint64(0)
    for p in parts:
        key = splitmix64(np.asarray(key, dtype=np.uint64) ^ np.asarray(p).astype(np.uint64))
    return np.asarray(key, dtype=np.uint64)


def uniform(seeds: np.ndarray, counters: np.ndarray, stream: int, n: int) -> np.ndarray:
    """Uniform floats in [0, 1): (len(seeds), n), float64; row i depends only on seeds[i], counters[i]."""
    key = hash_keys(seeds, counters, np.uint64(stream))  # (B,)
    bits = hash_keys(key[:, None], np.arange(n, dtype=np.uint64)[None, :])  # (B, n)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def normal(seeds: np.ndarray, counters: np.ndarray, stream: int, n: int) -> np.ndarray:
    """Standard normal floats (Box-Muller), (len(seeds), n)."""
    u = uniform(seeds, counters, stream, 2 * n)
    u1 = np.maximum(u[:, :n], 1e-12)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u[:, n:])


def episode_seed(base_seed: int, env_ids: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """The seed of episode ``episode_index`` of env ``env_ids`` in a run seeded ``base_seed``."""
    return hash_keys(np.uint64(base_seed), np.uint64(EPISODE), env_ids, episode_index)
