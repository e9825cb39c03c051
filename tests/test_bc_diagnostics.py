"""The students' opt-in diagnostics (rl/student/diagnostics.py) and their use in BC (bc/module.py, bc/plots.py):
they measure the model that is trained, the numbers mean what they say, and an MLP run has none to plot."""

import json
import math

import pytest
import torch

from bc.module import BCModule
from bc.plots import plot_bc
from rl.student.head import bc_loss
from tests.test_student_model import make, random_obs


def _window(model, B=3, T=None):
    """Observations, episode starts (one mid-window, mid-block) and a step mask with a gap."""
    T = T or 2 * model.cfg.block + 3
    obs = random_obs(model, B, T)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, model.cfg.block + 1] = True
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[2, T - 3:] = False  # a padded end, as the data module's last window of an episode
    return obs, starts, valid


@pytest.mark.parametrize("name", ["transformer", "transformer_p2_norm_prev"])
@torch.no_grad()
def test_diagnostics_mode_gives_the_action_distribution_of_the_fused_path(name):
    model = make(name)  # eval mode: the previous-action token is fed deterministically
    obs, starts, valid = _window(model)
    dist, memory = model.forward_sequence(obs, starts)
    with model.recording(valid) as probe:
        dist_diag, memory_diag = model.forward_sequence(obs, starts)
    # the attention weights the entropy is measured on are the ones that make the output
    torch.testing.assert_close(dist_diag.mean, dist.mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dist_diag.stddev, dist.stddev)
    torch.testing.assert_close(memory_diag.tokens, memory.tokens, atol=1e-6, rtol=1e-5)
    stats = probe.summary()
    cfg = model.cfg
    layers = [f"layer{i}" for i in range(cfg.n_layers)] if cfg.passes == 1 else \
        [f"pass{p}/layer{i}" for p in range(cfg.passes) for i in range(cfg.n_layers)]
    expected = {f"resid_{b}/{n}" for b in ("attn", "mlp") for n in layers}
    expected |= {f"attn_entropy/{n}/head{h}" for n in layers for h in range(cfg.n_heads)}
    if cfg.memory_update == "gate":  # the window has block ends: the gated updates are measured
        expected |= {"memory_update_share", "memory_half_life_median", "memory_half_life_max"}
    assert set(stats) == expected
    assert model._probe is None  # detached again: the next forward is the fused one


@pytest.mark.parametrize("qk_norm", [True, False])
@torch.no_grad()
def test_entropy_of_uniform_attention_over_n_keys_is_log_n(qk_norm):
    model = make("transformer", qk_norm=qk_norm)
    D, M, K, S = model.cfg.d_model, model.cfg.n_memory, model.cfg.block, model.S
    for layer in model.layers:  # zero queries and keys: every logit 0, uniform over the keys the mask allows
        layer.attn.qkv.weight[:2 * D].zero_()
        layer.attn.qkv.bias[:2 * D].zero_()
    T = 2 * K
    obs = random_obs(model, 2, T)
    starts = torch.zeros(2, T, dtype=torch.bool)
    starts[:, 0] = True
    # step t of a block: its S tokens attend to the M memory slots and the S tokens of steps 0..t
    n_keys = torch.tensor([M + (t % K + 1) * S for t in range(T)], dtype=torch.float64)
    stats = model.diagnostics(obs, starts)
    entropies = [v for k, v in stats.items() if k.startswith("attn_entropy/")]
    assert len(entropies) == model.cfg.n_layers * model.cfg.n_heads
    assert entropies == pytest.approx([float(n_keys.log().mean())] * len(entropies), rel=1e-5)
    first_steps = (torch.arange(T) % K == 0).expand(2, T)  # the step mask: only each block's first step
    stats = model.diagnostics(obs, starts, step_valid=first_steps)
    assert [v for k, v in stats.items() if k.startswith("attn_entropy/")] == pytest.approx(
        [math.log(M + S)] * len(entropies), rel=1e-5)


def test_residual_ratio_is_zero_at_safe_init_and_grows_with_training():
    model = make("transformer", init="safe").train()
    obs, starts, valid = _window(model)
    at_init = model.diagnostics(obs, starts)
    resid = {k: v for k, v in at_init.items() if k.startswith("resid_")}
    assert len(resid) == 2 * model.cfg.n_layers and all(v == 0.0 for v in resid.values()), resid
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    actions = torch.randn(*starts.shape, 5, generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        loss, _ = bc_loss(model.forward_sequence(obs, starts)[0], actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = model.diagnostics(obs, starts)
    assert all(trained[k] > 1e-4 for k in resid), trained
    assert all(0 < trained[k] < math.log(model.cfg.n_memory + 2 * model.cfg.block * model.S)
               for k in trained if k.startswith("attn_entropy/"))


@torch.no_grad()
def test_memory_norm_is_the_carried_memory_s_and_the_mlp_has_none():
    for name, vectors in (("transformer", lambda m: m.tokens), ("rnn", lambda m: m.h)):
        model = make(name)
        obs = random_obs(model, 3, 9)
        _, memory = model.forward_sequence(obs)
        norms = vectors(memory).norm(dim=-1)  # transformer (B, M); LSTM (layers, B)
        stats = model.diagnostics(obs)
        assert stats["memory_norm"] == pytest.approx(float(norms.mean()), rel=1e-6)
        assert stats["memory_norm_max"] == pytest.approx(float(norms.max()), rel=1e-6)
        assert stats["memory_norm_max"] > stats["memory_norm"] > 0
    mlp = make("mlp")
    assert mlp.diagnostics(random_obs(mlp, 3, 9)) == {}


def test_bc_diagnostics_leave_the_training_rng_and_mode_untouched():
    # prev-action dropout draws from the global RNG in train mode: a measurement must not draw
    model = make("transformer", prev_action="dropout").train()
    module = BCModule(model, 1e-3, 0.0, 1, 0.0, burn_in=4, seed=0)
    obs, starts, valid = _window(model, T=12)
    batch = {"policy": obs["policy"], "prev_action": obs["prev_action"], "reset": starts, "valid": valid}
    rng = torch.get_rng_state()
    stats = module.diagnostics(batch)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert {"memory_norm", "resid_attn/layer0", "attn_entropy/layer1/head1"} <= set(stats)


def test_internals_plot_skips_what_a_run_did_not_log(tmp_path):
    rows = [{"stage": "bc", "iteration": i, "train_loss": 1.0 / (i + 1)} for i in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_bc(tmp_path / "metrics.jsonl", tmp_path / "plots")  # an MLP run: no internals
    assert [p.name for p in written] == ["bc_training.png"]


@torch.no_grad()
def test_memory_half_life_is_the_gate_s_update_share_over_the_window():
    # what the probe reports equals the z of every memory update, taken from a hook on the gate itself
    model = make("transformer")
    gate = model.update
    for p in gate.parameters():
        p.add_(0.3 * torch.randn_like(p))  # a spread of update shares across the widths
    seen = []
    hook = gate.register_forward_hook(lambda g, inputs, _out: seen.append(g.gates(*inputs)[1]))
    obs = random_obs(model, 3, 3 * model.cfg.block + 2)  # three block ends: three memory updates
    stats = model.diagnostics(obs)
    hook.remove()
    z = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()  # (updates x B x M, D)
    assert len(seen) == 3
    assert stats["memory_update_share"] == pytest.approx(float(z.mean()), rel=1e-5)
    half_life = model.cfg.block * math.log(0.5) / torch.log1p(-z.mean(0))  # steps, per width
    assert stats["memory_half_life_median"] == pytest.approx(float(half_life.median()), rel=1e-5)
    assert stats["memory_half_life_max"] == pytest.approx(float(half_life.max()), rel=1e-5)
    assert stats["memory_half_life_max"] > stats["memory_half_life_median"] > 0
    # a gate biased shut keeps its memory: the half-life grows by orders of magnitude
    model.update.bias = 20.0
    assert model.diagnostics(obs)["memory_half_life_median"] > 1e4 * stats["memory_half_life_median"]
