"""Rollout storage for recurrent policies (the students): T steps of N envs, cut into sequences of L steps.

Like ``RolloutStorage`` (raw actions and their log-probs, time-outs already bootstrapped into the
rewards, GAE: a subclass of it), plus what a sequence model needs to recompute the rollout exactly:
  * ``starts`` (T, N) bool: step t of env n begins an episode (t = 0 of a fresh episode: the step
    before was done, or this is the first rollout);
  * the memory the policy acted from at the first step of each sequence (t = 0, L, 2L, ...).
Sequence s = j * N + n is env n's steps [j L, (j + 1) L). ``forward_sequence(obs, starts, memory0)`` over
a minibatch of sequences gives the rollout's distributions again (up to float error) while the
weights are unchanged: it resets the memory at ``starts`` as the rollout did after each done.

A memory is None (MLP) or a dataclass of tensors with one env dim each, not always the first (the
LSTM's h is (layers, N, H)): ``memory_env_dims`` finds it per field from the policy itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from rl.storage import RolloutStorage


# ---- memories: None or a dataclass of tensors, each with an env dim ------------------------------
def memory_env_dims(policy) -> dict[str, int] | None:
    """The env dim of each field of ``policy.initial_memory(n)``: the dim whose size follows n."""
    one, two = policy.initial_memory(1), policy.initial_memory(2)
    if one is None:
        return None
    dims = {}
    for f in dataclasses.fields(one):
        a, b = getattr(one, f.name).shape, getattr(two, f.name).shape
        diff = [d for d in range(len(a)) if a[d] != b[d]]
        if len(diff) != 1:
            raise ValueError(f"memory field {f.name!r}: no single env dim "
                             f"(shapes {tuple(a)} and {tuple(b)} for 1 and 2 envs)")
        dims[f.name] = diff[0]
    return dims


def _rebuild(memory, fn: Callable[[str, torch.Tensor, int], torch.Tensor], dims: dict[str, int]):
    return type(memory)(**{f.name: fn(f.name, getattr(memory, f.name), dims[f.name])
                           for f in dataclasses.fields(memory)})


def stack_memory(memories: list, dims: dict[str, int] | None):
    """J memories of N envs -> one memory of J*N rows on the env dim, row j*N + n = memories[j] env n."""
    if memories[0] is None:
        return None
    return _rebuild(memories[0], lambda name, x, d: torch.cat([getattr(m, name) for m in memories], d), dims)


def index_memory(memory, idx: torch.Tensor, dims: dict[str, int] | None):
    """The rows ``idx`` (B,) of the env dim of every field (None stays None)."""
    if memory is None:
        return None
    return _rebuild(memory, lambda name, x, d: x.index_select(d, idx.to(x.device)), dims)


def memory_state(memory) -> dict[str, torch.Tensor] | None:
    """A memory as a plain dict of tensors (None stays None): what ``torch.load(weights_only=True)`` reads."""
    return None if memory is None else {f.name: getattr(memory, f.name).clone() for f in dataclasses.fields(memory)}


def memory_from_state(policy, state: dict[str, torch.Tensor] | None):
    """``memory_state``'s dict back as the policy's memory dataclass."""
    return None if state is None else type(policy.initial_memory(1))(**state)


class RecurrentRolloutStorage(RolloutStorage):
    def __init__(self, num_steps: int, num_envs: int, obs_dims: dict[str, int], action_dim: int, seq_len: int,
                 memory_dims: dict[str, int] | None = None, device: str | torch.device = "cpu"):
        """obs_dims: the groups to store (with ``prev_action`` when the student reads it); memory_dims:
        ``memory_env_dims(policy)`` (None: every field's env dim is 0)."""
        T, N, L = num_steps, num_envs, seq_len
        if L < 1 or T % L:
            raise ValueError(f"num_steps ({T}) must be a multiple of seq_len ({L}): the rollout is cut into "
                             f"num_steps / seq_len sequences of seq_len steps per env")
        super().__init__(T, N, obs_dims, action_dim, device)  # the same per-step buffers, raw actions
        self.L, self.J = L, T // L
        self.memory_dims = memory_dims
        self.starts = torch.zeros(T, N, dtype=torch.bool, device=device)  # (T, N) an episode begins here
        self.memories: list = [None] * self.J  # memory at t = j L, before acting (N rows each)
        self.has_memory = [False] * self.J  # add_memory called for sequence j (an MLP's memory is None)
        self.prev_done = torch.ones(N, dtype=torch.bool, device=device)  # the first rollout starts episodes
        # (T, N, A) a teacher's raw actions at the states this rollout visited (``label``), or None: the
        # targets of PPO's teacher term (DAgger: the student's own states, labelled by the privileged teacher)
        self.teacher_actions: torch.Tensor | None = None

    def label(self, teacher: Callable[[dict], torch.Tensor]) -> None:
        """Label every stored step with ``teacher(obs) -> (T*N, A)``, obs flattened to (T*N, D) per group: one
        batched pass after the rollout (a memoryless teacher: it reads each step's privileged state alone)."""
        T, N = self.T, self.N
        flat = {k: v.reshape(T * N, -1) for k, v in self.obs.items()}
        self.teacher_actions = teacher(flat).reshape(T, N, -1).to(self.actions.device)

    def add_memory(self, t: int, memory) -> None:
        """The memory the policy acts from at step t (after the previous step's resets; None for an MLP).
        Kept where t % L == 0: a sequence's memory0. Required before ``add`` of those steps."""
        if t % self.L:
            return
        if memory is not None:
            if self.memory_dims is None:
                self.memory_dims = {f.name: 0 for f in dataclasses.fields(memory)}
            for name, d in self.memory_dims.items():
                size = getattr(memory, name).shape[d]
                if size != self.N:
                    raise ValueError(f"memory field {name!r} has {size} rows on dim {d}, not num_envs {self.N}: "
                                     f"pass memory_dims=memory_env_dims(policy)")
            memory = memory.detach()
        self.memories[t // self.L] = memory
        self.has_memory[t // self.L] = True

    def add(self, obs: dict, actions, rewards, dones, values, log_probs, means, stds) -> None:
        t = self.step
        if t < self.T and t % self.L == 0 and not self.has_memory[t // self.L]:
            raise RuntimeError(f"no memory stored for step {t}: call add_memory(t, memory) before add")
        super().add(obs, actions, rewards, dones, values, log_probs, means, stds)
        self.starts[t] = self.prev_done
        self.prev_done = dones.bool().to(self.prev_done.device)

    def clear(self) -> None:
        """Ready for the next rollout; ``prev_done`` carries over (its first step may start episodes)."""
        super().clear()
        self.teacher_actions = None
        self.memories = [None] * self.J
        self.has_memory = [False] * self.J

    def _sequences(self, x: torch.Tensor) -> torch.Tensor:
        """(T, N, ...) -> (J*N, L, ...), row j*N + n = env n's steps [j L, (j+1) L)."""
        J, L, N = self.J, self.L, self.N
        return x.reshape(J, L, N, *x.shape[2:]).transpose(1, 2).reshape(J * N, L, *x.shape[2:])

    def sequence_minibatches(self, num_minibatches: int, num_epochs: int,
                             generator: torch.Generator | None = None) -> Iterator[dict]:
        """Per epoch, the J*N sequences shuffled into ``num_minibatches`` minibatches (sizes differ by at
        most one), each sequence in exactly one. Batch-first, as ``forward_sequence`` reads it:
        obs groups (B, L, D), actions/means/stds (B, L, A), log_probs/values/returns/advantages (B, L),
        starts and valid (B, L) bool, memory0: the stored memory of those B sequences (None for an MLP);
        teacher_actions (B, L, A) when the rollout was labelled."""
        if self.step != self.T:
            raise RuntimeError(f"rollout incomplete: {self.step} of {self.T} steps stored")
        total = self.J * self.N
        if not 1 <= num_minibatches <= total:
            raise ValueError(f"num_minibatches ({num_minibatches}) must be in [1, {total}] (the number of sequences)")
        seq = {
            "obs": {k: self._sequences(v) for k, v in self.obs.items()},
            "actions": self._sequences(self.actions), "values": self._sequences(self.values),
            "log_probs": self._sequences(self.log_probs), "means": self._sequences(self.means),
            "stds": self._sequences(self.stds), "advantages": self._sequences(self.advantages),
            "returns": self._sequences(self.returns), "starts": self._sequences(self.starts),
            "valid": self._sequences(self.valid),
        }
        if self.teacher_actions is not None:
            seq["teacher_actions"] = self._sequences(self.teacher_actions)
        memory = stack_memory(self.memories, self.memory_dims)  # J*N rows on each field's env dim
        for _ in range(num_epochs):
            order = torch.randperm(total, generator=generator)
            for idx in order.tensor_split(num_minibatches):
                batch = {k: ({g: x[idx] for g, x in v.items()} if isinstance(v, dict) else v[idx])
                         for k, v in seq.items()}
                batch["memory0"] = index_memory(memory, idx, self.memory_dims)
                batch["indices"] = idx  # (B,) sequence ids j*N + n
                yield batch


def sample_raw(dist, generator: torch.Generator) -> torch.Tensor:
    """A draw of ``dist`` from ``generator``: raw, never clipped (the env clips its own copy)."""
    return dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)


# ---- a rollout of a student ---------------------------------------------------------------------
@dataclasses.dataclass
class RolloutCarry:
    """What one rollout hands the next: the env's current obs, the policy's memory (already reset for
    envs that just finished) and, for a student that reads it, its previous raw action (N, A)."""
    obs: dict
    memory: object = None
    prev_action: torch.Tensor | None = None


def student_cfg(policy):
    """The student's config, also through a wrapper that holds it as ``.student`` (StudentActorCritic)."""
    return getattr(getattr(policy, "student", policy), "cfg", None)


def reads_prev_action(policy) -> bool:
    return getattr(student_cfg(policy), "prev_action", "off") != "off"


def carry_inputs(carry: RolloutCarry) -> dict:
    """The inputs the policy acts from next: the obs [+ the previous raw action]. V of the last obs for
    GAE is ``policy.value(carry_inputs(carry), carry.memory)`` (a shared critic reads the previous action)."""
    return {**carry.obs, "prev_action": carry.prev_action} if carry.prev_action is not None else carry.obs


@torch.no_grad()
def collect_rollout(env, policy, storage: RecurrentRolloutStorage, carry: RolloutCarry,
                    generator: torch.Generator, value_fn: Callable | None = None, gamma: float = 0.99,
                    on_step: Callable | None = None) -> RolloutCarry:
    """Fill ``storage`` with T steps: act with ``policy.act(obs, memory)``, sample raw actions (never
    clipped: the env clips its copy), step, reset the memory of finished envs. ``value_fn(obs, memory)
    -> (N,)`` gives the stored values and V(final_obs) for time-outs (folded into the reward as
    ``RolloutStorage`` expects); without it values are 0. When it is the policy's own ``value`` and the
    policy has ``act_value``, the stored values come from the acting pass (a critic on the student's trunk
    reads the features the action came from, no second pass). V(final_obs) is one more step from the memory
    after the last action, for the timed-out rows only, whose new memory is dropped (the carried memory does
    not advance; a time-out comes once per episode, so this costs a fraction 1 / episode length).
    ``on_step(t, next_obs, rewards, dones, extras)``, called right after each env step (the runner's episode
    records and reward check), may return the next obs to act from instead (envs it set to other states), or
    None. Returns the carry for the next rollout."""
    obs, memory, prev = carry.obs, carry.memory, carry.prev_action
    N = storage.N
    if memory is None:
        memory = policy.initial_memory(N)
    if reads_prev_action(policy) and prev is None:
        prev = torch.zeros(N, student_cfg(policy).action_dim)
    fused = value_fn is not None and hasattr(policy, "act_value") and value_fn == getattr(policy, "value", None)
    for t in range(storage.T):
        inputs = {**obs, "prev_action": prev} if prev is not None else obs
        storage.add_memory(t, memory)
        if fused:
            dist, memory, values = policy.act_value(inputs, memory)
        else:
            values = value_fn(inputs, memory) if value_fn is not None else torch.zeros(N)
            dist, memory = policy.act(inputs, memory)
        actions = sample_raw(dist, generator)  # (N, A)
        log_probs = dist.log_prob(actions).sum(-1)  # (N,)
        next_obs, rewards, dones, extras = env.step(actions)
        if on_step is not None:
            replaced = on_step(t, next_obs, rewards, dones, extras)
            next_obs = next_obs if replaced is None else replaced
        rewards = rewards.clone()
        time_outs = extras["time_outs"]
        if value_fn is not None and bool(time_outs.any()):
            # V of the truncated episode's true last state, from the memory it would have been seen with
            final = {**extras["final_obs"], "prev_action": actions} if prev is not None else extras["final_obs"]
            ids = time_outs.nonzero().squeeze(-1)  # (n,)
            final = {k: v[ids] for k, v in final.items()}
            rewards[ids] += gamma * value_fn(final, index_memory(memory, ids, storage.memory_dims))
        storage.add(inputs, actions, rewards, dones, values, log_probs, dist.mean, dist.stddev)
        memory = policy.reset_memory(memory, dones.bool())
        if prev is not None:
            prev = torch.where(dones.bool()[:, None], torch.zeros_like(actions), actions)
        obs = next_obs
    return RolloutCarry(obs, memory, prev)
