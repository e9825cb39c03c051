"""The environment contract shared by the MuJoCo tasks and the Isaac Lab wrapper.

Conventions follow rsl_rl / Isaac Lab so their users feel at home. N is ``num_envs``.

``reset() -> obs``
    Resets every env. ``obs`` is a dict of groups, each a float32 tensor on ``env.device``:
    ``obs["policy"]``: (N, D_policy) what the student sees: noisy, with occluded cube terms zeroed and a
    per-cube ``visible`` term; ``obs["privileged"]``: (N, D_priv) full state plus hidden physical
    properties (in the ``revealed`` or ``omniscient`` view) for the teacher and the critic.

``step(action) -> obs, reward, done, extras``
    ``action``: (N, A) raw, unbounded floats; the env clips to its limits here and nowhere else, and
    callers store the raw action. ``reward``: (N,) float32. ``done``: (N,) bool, termination or
    time-out. Finished envs are reset automatically; the returned ``obs`` rows of those envs are the
    first observation of the next episode. ``extras``:
      ``time_outs`` (N,) bool: truncated by the episode limit (bootstrap these);
      ``terminated`` (N,) bool: success or failure;
      ``final_obs``: obs dict whose rows for done envs are the true last observation;
      ``success`` (N,) bool; ``attempt`` (N,) int64 attempt index of the step just taken;
      ``perturbations``: dict of (N,) bool, which injected failure started this step;
      ``episode``: dict of (N,) tensors of finished-episode statistics (valid where ``done``).

``get_state(env_ids) -> (len(env_ids), S) float64`` / ``set_state(env_ids, states)``
    The full simulator state plus the task's own state (hidden parameters, occlusion schedule, step
    and attempt counters, episode seed, and the base seed the next episodes' seeds derive from).
    Setting a state and stepping continues identically, through auto-resets too.
    ``set_state(..., keep_episode_counter=True)`` borrows a state (a demonstration's) but keeps the
    env's own episode counter and base seed, so its later episodes are its own.

``obs_spec``: ``ObsSpec`` naming, per group, which entity and term each slice belongs to, so a
transformer can make one token per entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObsTerm:
    entity: str  # "gripper", "cube0", ..., "base"
    name: str  # "pos", "yaw", ...
    start: int
    end: int


@dataclass
class ObsSpec:
    groups: dict[str, list[ObsTerm]] = field(default_factory=dict)

    def dim(self, group: str) -> int:
        terms = self.groups[group]
        return terms[-1].end if terms else 0

    def entities(self, group: str) -> list[str]:
        seen: list[str] = []
        for t in self.groups[group]:
            if t.entity not in seen:
                seen.append(t.entity)
        return seen

    def entity_slices(self, group: str, entity: str) -> list[tuple[int, int]]:
        return [(t.start, t.end) for t in self.groups[group] if t.entity == entity]

    def to_dict(self) -> dict:
        return {g: [[t.entity, t.name, t.start, t.end] for t in ts] for g, ts in self.groups.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ObsSpec:
        return cls({g: [ObsTerm(*t) for t in ts] for g, ts in d.items()})


class ConfigError(ValueError):
    """A user-facing configuration problem: the pipeline prints its message and exits with code 2."""
