"""The students (rl/student/model.py, rl/student/baselines.py): exact step/sequence equality, resets, bounded memory and
cache, the unclamped Gaussian head, a memory task only a history model solves, safe init, config round trip."""

import json

import pytest
import torch
import yaml

from envs.base import ConfigError, ObsSpec, ObsTerm
from envs.mujoco.observations import ObservationManager
from rl.student.head import bc_loss
from rl.student.model import BlockMemory, build_student, student_from_config
from tests.conftest import ROOT

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_memory": 3, "block": 4, "init": "default", "head_hidden": [32]}
KINDS = {
    "transformer": SMALL,
    "transformer_p2_norm_prev": {**SMALL, "block": 3, "passes": 2, "memory_update": "norm", "qk_norm": False,
                                 "prev_action": "on"},
    "transformer_skip": {**SMALL, "obs_skip": True},
    "rnn": {"hidden": [32], "rnn_hidden": 32, "rnn_layers": 2, "head_hidden": [32]},
    "mlp": {"hidden": [32], "head_hidden": [32]},
}


def policy_spec(n_cubes: int = 2) -> ObsSpec:
    cfg = yaml.safe_load((ROOT / "configs" / "env" / "stack_pick_multi.yaml").read_text())
    return ObservationManager(cfg["observations"], n_cubes, True).spec


def make(name: str, spec: ObsSpec | None = None, **over):
    torch.manual_seed(0)
    kind = "transformer" if name.startswith("transformer") else name
    return build_student(kind, spec or policy_spec(), {**KINDS[name], **over}).eval()


def random_obs(model, B: int, T: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {"policy": torch.randn(B, T, model.spec.dim("policy"), generator=g)}
    obs["prev_action"] = torch.randn(B, T, 5, generator=g)
    return obs


def step_through(model, obs: dict, starts: torch.Tensor, memory=None):
    """Step mode over a window: reset where an episode starts, then act. Returns means (B, T, A)."""
    B, T = starts.shape
    memory = memory if memory is not None else model.initial_memory(B)
    means = []
    for t in range(T):
        memory = model.reset_memory(memory, starts[:, t])
        dist, memory = model.act({k: v[:, t] for k, v in obs.items()}, memory)
        means.append(dist.mean)
    return torch.stack(means, 1), memory


@pytest.mark.parametrize("name", list(KINDS))
@torch.no_grad()
def test_step_mode_equals_sequence_mode(name):
    model = make(name)
    K = model.cfg.block if hasattr(model.cfg, "block") else 4
    B, T = 4, 3 * K + 3  # longer than a block: memory carried across blocks
    obs = random_obs(model, B, T)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, K + 1] = True  # mid-block starts, at different places per row
    starts[2, 2] = starts[2, 2 * K + 1] = True
    starts[3, 1] = starts[3, 2] = True  # two one-step episodes in a row
    seq, mem_seq = model.forward_sequence(obs, starts)
    step, mem_step = step_through(model, obs, starts)
    torch.testing.assert_close(seq.mean, step, atol=1e-5, rtol=0)
    # A window cut mid-block and carried through the returned memory gives the same actions.
    cut = K + 2
    first, mem = model.forward_sequence({k: v[:, :cut] for k, v in obs.items()}, starts[:, :cut])
    second, mem2 = model.forward_sequence({k: v[:, cut:] for k, v in obs.items()}, starts[:, cut:], mem)
    torch.testing.assert_close(torch.cat([first.mean, second.mean], 1), seq.mean, atol=1e-5, rtol=0)
    if isinstance(mem_seq, BlockMemory):
        assert torch.equal(mem_seq.count, mem_step.count) and torch.equal(mem2.count, mem_seq.count)
        torch.testing.assert_close(mem_seq.tokens, mem_step.tokens, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["transformer", "transformer_p2_norm_prev", "rnn"])
@torch.no_grad()
def test_episode_start_makes_output_independent_of_previous_episode(name):
    model = make(name)
    K = model.cfg.block if hasattr(model.cfg, "block") else 4
    B, T, t0 = 2, 3 * K + 2, K + 2  # the new episode starts mid-block
    obs = random_obs(model, B, T)
    other = {k: v.clone() for k, v in obs.items()}
    for v in other.values():
        v[:, :t0] = torch.randn_like(v[:, :t0]) * 3  # a different previous episode
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, 0] = starts[:, t0] = True
    a, _ = model.forward_sequence(obs, starts)
    b, _ = model.forward_sequence(other, starts)
    torch.testing.assert_close(a.mean[:, t0:], b.mean[:, t0:], atol=1e-6, rtol=0)
    sa, _ = step_through(model, obs, starts)
    sb, _ = step_through(model, other, starts)
    torch.testing.assert_close(sa[:, t0:], sb[:, t0:], atol=1e-6, rtol=0)
    # Without the start the past does matter: the equality above is the reset's doing.
    no_reset = starts.clone()
    no_reset[:, t0] = False
    c, _ = model.forward_sequence(obs, no_reset)
    d, _ = model.forward_sequence(other, no_reset)
    assert (c.mean[:, t0:] - d.mean[:, t0:]).abs().max() > 1e-3


def test_inference_step_equals_the_autograd_step_and_leaves_the_callers_memory_alone():
    """act under no_grad takes _step_inference (in-place cache writes on one copy); with autograd on it takes
    _advance. Over 3 blocks with desynchronised resets both give the same means and memories, and a memory
    the caller kept (as a rollout storage keeps a sequence's memory0) is not written into."""
    model = make("transformer")
    _scale_weights(model, 3.0)  # zero-init residual branches would hide a wrong cache slot
    B, T = 5, 3 * model.cfg.block
    obs = random_obs(model, B, T, seed=4)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[1, 5] = starts[3, 11] = starts[4, 2] = True  # rows complete blocks at different steps
    mem_fast = mem_slow = model.initial_memory(B)
    for t in range(T):
        step_obs = {k: v[:, t] for k, v in obs.items()}
        mem_fast, mem_slow = model.reset_memory(mem_fast, starts[:, t]), model.reset_memory(mem_slow, starts[:, t])
        kept = mem_fast.k.clone()
        with torch.no_grad():
            fast, new_fast = model.act(step_obs, mem_fast)
        assert torch.equal(mem_fast.k, kept)  # the old memory is untouched
        with torch.enable_grad():
            slow, mem_slow = model.act(step_obs, mem_slow)
        torch.testing.assert_close(fast.mean, slow.mean.detach(), atol=1e-5, rtol=0)
        mem_fast = new_fast
        assert torch.equal(mem_fast.count, mem_slow.count)
        for a, b in ((mem_fast.k, mem_slow.k), (mem_fast.v, mem_slow.v), (mem_fast.tokens, mem_slow.tokens)):
            torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=0)
    assert bool((mem_fast.count != mem_fast.count[0]).any())  # the rows really were desynchronised


def _memory_norms(model, steps: int, B: int = 4) -> list[float]:
    g = torch.Generator().manual_seed(3)
    memory = model.initial_memory(B)
    norms = []
    with torch.no_grad():
        for _ in range(steps):
            obs = {"policy": torch.randn(B, model.spec.dim("policy"), generator=g) + 1.0}
            _, memory = model.act(obs, memory)
            norms.append(memory.tokens.norm(dim=-1).max().item())  # the largest memory token
    return norms


def _scale_weights(model, factor: float):
    with torch.no_grad():  # trained weights are larger than init's: make the write path strong
        for name, p in model.named_parameters():
            if p.dim() == 2 and "head" not in name:
                p.mul_(factor)


@pytest.mark.parametrize("update", ["gate", "norm"])
def test_memory_norm_bounded_over_25x_the_window(update):
    K, steps = 8, 25 * 8 + 8
    model = make("transformer", block=K, memory_update=update)
    _scale_weights(model, 3.0)
    norms = _memory_norms(model, steps)
    D = model.cfg.d_model
    at_k, late, end = norms[K - 1], max(norms[steps // 2:]), norms[-1]
    assert at_k > 0
    if update == "gate":
        assert end <= D ** 0.5 + 1e-4  # every entry in [-1, 1]
    else:
        assert end <= 1.01 * model.update.weight.abs().max().item() * D ** 0.5
    assert end <= 4.0 * at_k and late <= 1.2 * max(norms[: steps // 2])  # saturated, not growing
    # The same model carrying a raw residual (m + candidate, no gate, no norm) keeps growing.
    model.cfg.memory_update, model.update = "norm", torch.nn.Identity()
    raw = _memory_norms(model, steps)
    assert raw[-1] > 3.0 * raw[K - 1] and raw[-1] > 3.0 * end


def test_kv_cache_never_holds_more_than_k_steps():
    model = make("transformer_p2_norm_prev")
    K, S, V, M = model.cfg.block, model.S, model.cfg.passes * model.cfg.n_layers, model.cfg.n_memory
    H, Dh = model.cfg.n_heads, model.cfg.d_model // model.cfg.n_heads
    B, T = 3, 4 * K + 1
    obs = random_obs(model, B, T)
    memory = model.initial_memory(B)
    sizes = set()
    with torch.no_grad():
        for t in range(T):
            _, memory = model.act({k: v[:, t] for k, v in obs.items()}, memory)
            assert memory.k.shape == memory.v.shape == (B, V, H, M + K * S, Dh)  # memory slots, then K steps
            assert torch.equal(memory.count, torch.full((B,), (t + 1) % K))
            filled = memory.k[:, :, :, M:].abs().sum((1, 2, 4)).view(B, K, S).sum(-1) > 0  # (B, K) steps in use
            assert torch.equal(filled, torch.arange(K)[None].expand(B, K) < memory.count[:, None])
            sizes.add(sum(getattr(memory, f).numel() for f in ("tokens", "k", "v", "count")))
    assert len(sizes) == 1  # the state is the same size at step 1 and at step 4K+1


@pytest.mark.parametrize("name", ["transformer", "rnn", "mlp"])
def test_log_std_unclamped_and_raw_actions_reach_the_loss(name):
    model = make(name)
    obs = random_obs(model, 2, 3)
    with torch.no_grad():
        model.head.log_std.fill_(-20.0)
    dist, _ = model.forward_sequence(obs)
    assert torch.equal(dist.stddev, torch.full_like(dist.stddev, torch.exp(torch.tensor(-20.0)).item()))
    # At the mean the NLL's gradient on log-std is +1 per dim: a step moves it below -20, no floor.
    loss, _ = bc_loss(dist, dist.mean.detach())
    opt = torch.optim.SGD([model.head.log_std], lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert (model.head.log_std < -20.0).all()
    with torch.no_grad():
        model.head.log_std.fill_(20.0)
    assert torch.allclose(model.forward_sequence(obs)[0].stddev, torch.tensor(20.0).exp())
    # Raw actions: a target of 5.0 (beyond the env's [-1, 1]) pulls harder than 1.0; a clip would tie them.
    grads = []
    for target in (1.0, 5.0):
        mean = torch.zeros(1, 5, requires_grad=True)
        loss, _ = bc_loss(torch.distributions.Normal(mean, torch.ones(1, 5)), torch.full((1, 5), target),
                          mse_weight=1.0)
        grads.append(torch.autograd.grad(loss, mean)[0])
    assert torch.allclose(grads[1], 5.0 * grads[0])


def _bit_task(B: int, T: int, g: torch.Generator):
    """Episodes of T steps: a bit (+-1) in the gripper's first column at step 0, zero afterwards; the
    target action at every step is the bit."""
    bit = torch.randint(0, 2, (B,), generator=g).float() * 2 - 1  # (B,)
    obs = torch.zeros(B, T, 9)
    obs[:, 0, 0] = bit
    obs[:, :, 3:] = 0.1 * torch.randn(B, T, 6, generator=g)  # cube noise that tells nothing
    action = bit[:, None, None].expand(B, T, 5).clone()
    return {"policy": obs}, action


MEMORY_TASK = {
    "transformer": {"d_model": 32, "n_heads": 2, "n_layers": 1, "n_memory": 2, "block": 4, "head_hidden": [32],
                    "init_std": 0.5},
    "rnn": {"hidden": [32], "rnn_hidden": 32, "rnn_layers": 1, "head_hidden": [32], "init_std": 0.5},
    "mlp": {"hidden": [32], "head_hidden": [32], "init_std": 0.5},
}


@pytest.mark.parametrize("kind", ["transformer", "rnn", "mlp"])
def test_memory_task_needs_history(kind):
    spec = ObsSpec({"policy": [ObsTerm("gripper", "pos", 0, 3), ObsTerm("cube0", "pos", 3, 6),
                               ObsTerm("cube1", "pos", 6, 9)]})
    torch.manual_seed(0)
    model = build_student(kind, spec, MEMORY_TASK[kind])
    K, T = 4, 16  # the bit must cross three block boundaries
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):  # the transformer is at 1.0 after about 30 of these (batch 16)
        obs, action = _bit_task(16, T, g)
        starts = torch.zeros(16, T, dtype=torch.bool)
        starts[:, 0] = True
        loss, _ = bc_loss(model.forward_sequence(obs, starts)[0], action, mse_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    obs, action = _bit_task(256, T, g)
    with torch.no_grad():  # closed-loop style: step mode
        means, _ = step_through(model, obs, torch.nn.functional.pad(torch.ones(256, 1, dtype=torch.bool), (0, T - 1)))
    acc = ((means[:, K + 2:, 0] > 0) == (action[:, K + 2:, 0] > 0)).float().mean().item()
    if kind == "mlp":
        assert acc < 0.65, acc
    else:
        assert acc > 0.95, acc


def _branch_outputs(model) -> list[torch.Tensor]:
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o))
             for layer in model.layers for m in (layer.attn.proj, layer.out)]
    model.forward_sequence(random_obs(model, 2, 2 * model.cfg.block + 1))
    for h in hooks:
        h.remove()
    return outs


@torch.no_grad()
def test_safe_init_zeroes_every_residual_branch():
    safe = _branch_outputs(make("transformer", init="safe"))
    assert len(safe) > 0 and all(torch.equal(o, torch.zeros_like(o)) for o in safe)
    default = _branch_outputs(make("transformer", init="default"))
    assert all(o.abs().max() > 0 for o in default)


@pytest.mark.parametrize("name", list(KINDS))
@torch.no_grad()
def test_config_round_trip_rebuilds_an_identical_model(name):
    model = make(name)
    obs = random_obs(model, 3, 7)
    model.fit_normalizer(obs["policy"] * 2 + 1, obs["prev_action"] * 3, init_std_from_actions=True)
    for p in model.parameters():
        p.add_(0.01 * torch.randn_like(p))
    d = json.loads(json.dumps(model.config_dict()))  # what a checkpoint carries: plain data
    rebuilt = student_from_config(d).eval()
    assert type(rebuilt) is type(model) and rebuilt.config_dict() == d
    rebuilt.load_state_dict(model.state_dict(), strict=True)  # the normaliser's buffers included
    assert torch.equal(rebuilt.norm.obs_std, model.norm.obs_std) and not torch.all(model.norm.obs_std == 1)
    a, b = model.forward_sequence(obs)[0], rebuilt.forward_sequence(obs)[0]
    assert torch.equal(a.mean, b.mean) and torch.equal(a.stddev, b.stddev)
    with pytest.raises(ConfigError, match="unknown config keys"):
        build_student(d["kind"], model.spec, {**d["cfg"], "no_such_key": 1})


@torch.no_grad()
def test_cubes_are_interchangeable():
    model = make("transformer")
    spec = model.spec
    obs = random_obs(model, 3, 2 * model.cfg.block + 1)
    model.fit_normalizer(obs["policy"] + torch.arange(spec.dim("policy")).float(), obs["prev_action"])
    c0 = [c for s, e in spec.entity_slices("policy", "cube0") for c in range(s, e)]
    c1 = [c for s, e in spec.entity_slices("policy", "cube1") for c in range(s, e)]
    assert torch.equal(model.norm.obs_mean[c0], model.norm.obs_mean[c1])  # pooled over cubes
    swapped = {k: v.clone() for k, v in obs.items()}
    swapped["policy"][..., c0], swapped["policy"][..., c1] = obs["policy"][..., c1], obs["policy"][..., c0]
    assert not torch.equal(swapped["policy"], obs["policy"])
    # One shared projection: the tokens are permuted, and the action (over the whole window) is not.
    tok, tok_sw = model._step_tokens(obs), model._step_tokens(swapped)  # (B, T, S, D): gripper, cube0, cube1, base
    torch.testing.assert_close(tok_sw[:, :, [0, 2, 1, 3, 4]], tok, atol=1e-6, rtol=0)
    a, b = model.forward_sequence(obs)[0].mean, model.forward_sequence(swapped)[0].mean
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - model.forward_sequence({**obs, "policy": obs["policy"].roll(1, -1)})[0].mean).abs().max() > 1e-3

