"""Retry-until-success collection: the teacher acts, failures are injected, simple failures filtered.

Collection runs in rounds. Round r resets all N envs with a seed derived from (collect seed, r);
every env plays one episode, to success or its limit, and the round's episodes are written in env
order. Everything is deterministic (counter-based env randomness, deterministic teacher actions),
so a resumed run re-plays an interrupted round and writes only the episodes not yet committed:
no loss beyond the episode in flight, no duplicate.

Attempts: the env starts a new attempt when a grasp is lost and the cube does not come to rest in
place within a few steps (a drop, a slip, a static cube that will not come up, a missed placement);
every step records its attempt index. An episode is
kept only if it ends in success; the rest are filtered with a reason (``REJECT_REASONS``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from common.rollout import first_episodes
from datasets.store import EpisodeStore, obs_key
from datasets.summary import summarize
from envs import rng


@dataclass
class FilterConfig:
    max_attempts: int = 6  # more attempts than this: too_many_attempts
    retry_share_target: float | None = None  # kept share with >= 1 failed attempt; None: keep what comes
    keep_failures: bool = False  # DAgger (collect.keep=all): failed episodes are kept too, only sim_unstable filtered


def round_seed(seed: int, round_index: int) -> int:
    return int(rng.hash_keys(np.uint64(seed), np.uint64(0xC011EC7), np.uint64(round_index)) & np.uint64(2**62 - 1))


def classify(success: bool, lost: bool, unstable: bool, touched: bool, attempts: int, cfg: FilterConfig) -> str | None:
    """The reason to filter an episode out, or None to keep it."""
    if unstable:
        return "sim_unstable"
    if cfg.keep_failures:  # the learner's failures are where its labels are needed most
        return None
    if lost:
        return "object_lost"
    if attempts > cfg.max_attempts:
        return "too_many_attempts"
    if not touched:
        return "no_contact"
    if not success:
        return "never_succeeded"
    return None


def data_layout(env) -> dict[str, tuple[tuple, str]]:
    layout = {}
    for group, terms in env.obs_spec.groups.items():
        for t in terms:
            layout[f"obs/{group}/{obs_key(t.entity, t.name)}"] = ((t.end - t.start,), "float32")
    layout.update({f"perturbation/{kind}": ((), "bool") for kind in PERTURBATIONS})
    layout.update({"action": ((env.num_actions,), "float32"), "reward": ((), "float32"),
                   "attempt": ((), "int16"), "success": ((), "bool"), "sim_state": ((env.state_size,), "float64")})
    return layout


PERTURBATIONS = ("drop", "push", "noise")  # data/perturbation/<kind>: acting at this step
EPISODE_LAYOUT = {"seed": "uint64", "length": "int64", "n_attempts": "int64", "return": "float32",
                  "round": "int64", "slot": "int64", "drops": "int64", "pushes": "int64", "noise_bursts": "int64",
                  "retry_changed_cube": "bool", "retry_yaw_change": "float32"}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EpisodeBuffer:
    """Steps of one env's current episode, split into the store's arrays."""

    def __init__(self, env):
        self.spec = env.obs_spec
        self.steps: list[dict] = []

    def add(self, obs: dict, action, state, reward, attempt, success, perturb) -> None:
        """``action``: the policy's raw output (A,), unclipped; ``perturb``: (3,) bool, which of
        ``PERTURBATIONS`` acted at this step."""
        self.steps.append({"obs": {g: obs[g].numpy().copy() for g in self.spec.groups}, "action": action,
                           "state": state, "reward": reward, "attempt": attempt, "success": success,
                           "perturb": perturb})

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for group, terms in self.spec.groups.items():
            flat = np.stack([s["obs"][group] for s in self.steps])
            for t in terms:
                out[f"obs/{group}/{obs_key(t.entity, t.name)}"] = flat[:, t.start:t.end]
        out["action"] = np.stack([s["action"] for s in self.steps])
        out["sim_state"] = np.stack([s["state"] for s in self.steps])
        out["reward"] = np.array([s["reward"] for s in self.steps], np.float32)
        out["attempt"] = np.array([s["attempt"] for s in self.steps], np.int16)
        out["success"] = np.array([s["success"] for s in self.steps], bool)
        acting = np.stack([s["perturb"] for s in self.steps]).astype(bool)  # (T, 3)
        for k, kind in enumerate(PERTURBATIONS):
            out[f"perturbation/{kind}"] = acting[:, k]
        return out


def retry_difference(arrays: dict[str, np.ndarray], spec, n_cubes: int) -> tuple[bool, float]:
    """How the successful attempt differed from the failed one before it: did the held cube change,
    and by how much did the grasp yaw turn (both read from the privileged group at grasp time)."""
    attempt = arrays["attempt"].astype(int)
    if attempt.max() == 0 or not any(t.name == "held" for t in spec.groups["privileged"]):
        return False, 0.0
    held = np.stack([arrays[f"obs/privileged/{obs_key(f'cube{c}', 'held')}"][:, 0] for c in range(n_cubes)], 1) > 0.5
    yaw = arrays["obs/privileged/gripper_yaw"][:, 0]
    last, prev = attempt.max(), attempt.max() - 1

    def first_grasp(a):
        idx = np.nonzero((attempt == a) & held.any(1))[0]
        return (int(held[idx[0]].argmax()), float(yaw[idx[0]])) if len(idx) else (None, None)

    cube_prev, yaw_prev = first_grasp(prev)
    cube_last, yaw_last = first_grasp(last)
    if cube_prev is None or cube_last is None:
        return False, 0.0
    return cube_prev != cube_last, float(abs(np.angle(np.exp(1j * (yaw_last - yaw_prev)))))


def _kept_counts(store: EpisodeStore) -> tuple[int, int]:
    attempts = store.episode_meta()["n_attempts"]
    return int((attempts > 1).sum()), int((attempts <= 1).sum())


def collect(env, teacher, store: EpisodeStore, num_episodes: int, seed: int, filters: FilterConfig,
            progress=None, plan=None, label_with=None) -> dict:
    """Collect until ``store`` holds ``num_episodes`` kept episodes; resumes where it stopped.

    ``label_with(obs) -> (N, A)`` (DAgger, ``collect.actor``): ``teacher`` is the learner that acts, and
    the store's ``action`` at each step is ``label_with``'s label of the state acted on, not the action
    taken.

    With a ``plan`` (parallel workers, see collect/parallel.py) this process plays only the plan's
    rounds, always to their end, and stops when the plan says the rounds before are enough; the
    merge then cuts the union at ``num_episodes`` in the single-worker order."""
    meta, rejected = store.episode_meta(), store.rejected()
    committed = set(zip(meta["round"].tolist(), meta["slot"].tolist())) | \
        set(zip(rejected["round"].tolist(), rejected["slot"].tolist()))
    round_index = max([r for r, _ in committed], default=plan.first if plan else 0)
    kept_by_round: dict[int, int] = {}
    for r in meta["round"].tolist():
        kept_by_round[r] = kept_by_round.get(r, 0) + 1
    kept_retry, kept_plain = _kept_counts(store)
    share = filters.retry_share_target
    quota_retry = None if share is None else int(np.ceil(share * num_episodes))
    limit = num_episodes if plan is None else float("inf")
    N = env.num_envs
    while (store.num_episodes < num_episodes) if plan is None else not plan.should_stop(round_index):
        buffers = [EpisodeBuffer(env) for _ in range(N)]
        counters = np.zeros((N, 3), int)
        before: dict = {}

        def snapshot(alive: np.ndarray, before=before) -> None:  # the state each step starts from, what acts on it
            before["states"], before["ongoing"] = env.get_state().numpy(), env.active_perturbations()

        def record(step, round_index=round_index, buffers=buffers, counters=counters, before=before) -> bool:
            nonlocal kept_retry, kept_plain
            extras = step.extras
            action = step.action if label_with is None else label_with(step.obs)
            started = np.stack([extras["perturbations"][k].numpy() for k in PERTURBATIONS], 1)  # (N, 3) bool
            acting = started | np.stack([before["ongoing"][k].numpy() for k in PERTURBATIONS], 1)
            for i in np.nonzero(step.alive)[0]:
                buffers[i].add({g: v[i] for g, v in step.obs.items()}, action[i].numpy().astype(np.float32),
                               before["states"][i], float(step.reward[i]), int(extras["attempt"][i]),
                               bool(extras["success"][i]), acting[i])
                counters[i] += started[i]
            for i in np.nonzero(step.ended)[0]:  # env order within a step: deterministic, so resume reproduces it
                if store.num_episodes >= limit:
                    break
                ep = extras["episode"]
                attempts = int(ep["attempts"][i])
                reason = classify(bool(extras["success"][i]), bool(extras["failure"]["object_lost"][i]),
                                  bool(extras["failure"]["sim_unstable"][i]), bool(ep["touched"][i]), attempts, filters)
                if reason is None and quota_retry is not None:
                    full = kept_retry >= quota_retry if attempts > 1 else kept_plain >= num_episodes - quota_retry
                    reason = "mix_quota" if full else None
                episode_seed = np.uint64(np.int64(ep["seed"][i]).view(np.uint64))
                record = {"seed": episode_seed, "round": round_index, "slot": int(i),
                          "length": len(buffers[i].steps), "n_attempts": attempts}
                if reason is None:
                    arrays = buffers[i].arrays()
                    changed, yaw_change = retry_difference(arrays, env.obs_spec, env.n_cubes)
                    store.append_episode(arrays, {**record, "return": float(ep["return"][i]),
                                                  "drops": counters[i, 0], "pushes": counters[i, 1],
                                                  "noise_bursts": counters[i, 2], "retry_changed_cube": changed,
                                                  "retry_yaw_change": yaw_change})
                    kept_retry += attempts > 1
                    kept_plain += attempts <= 1
                    kept_by_round[round_index] = kept_by_round.get(round_index, 0) + 1
                else:
                    store.append_rejected({**record, "reason": reason})
                committed.add((round_index, int(i)))
                if progress is not None:
                    progress(store)
            return store.num_episodes >= limit

        playing = np.array([(round_index, i) not in committed for i in range(N)])
        first_episodes(env, teacher.act, teacher.reset, seed=round_seed(seed, round_index), track=playing,
                       before_step=snapshot, on_step=record)
        if plan is not None:
            store.flush()  # the round's episodes are committed before the round is announced as done
            plan.round_done(round_index, kept_by_round.get(round_index, 0))
        round_index += plan.step if plan else 1
    store.flush()
    return summarize(store)

