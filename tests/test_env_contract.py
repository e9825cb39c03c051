"""The VecEnv contract of envs/base.py on the MuJoCo tasks."""

import pytest
import torch

from envs.base import ConfigError
from tests.conftest import env_config

ALL_ON = dict(  # every source of randomness on, so determinism tests mean something
    perturbations={"drop_rate": 0.05, "push_rate": 0.05, "noise_rate": 0.05},
    occlusion={"rate": 0.1},
)


def random_actions(n, steps, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, 5, generator=g) for _ in range(steps)]


def test_shapes_dtypes_and_spec(make):
    env = make("stack_pick_multi", num_envs=4)
    obs = env.reset()
    for group in ("policy", "privileged"):
        assert obs[group].dtype == torch.float32
        assert obs[group].shape == (4, env.obs_spec.dim(group))
    assert env.obs_spec.entities("policy") == ["gripper", "cube0", "cube1", "cube2", "base"]
    obs, reward, done, extras = env.step(torch.zeros(4, 5))
    assert reward.shape == (4,) and reward.dtype == torch.float32
    assert done.shape == (4,) and done.dtype == torch.bool
    for key in ("time_outs", "terminated", "success", "attempt", "final_obs", "perturbations", "episode"):
        assert key in extras
    assert env.get_state().shape == (4, env.state_size)


def test_time_outs_are_not_terminations_and_final_obs_is_the_last(make):
    observations = env_config("lift")["observations"]
    observations["privileged"]["time"] = {}  # not in the default groups; here it tells the last step
    env = make("lift", num_envs=3, episode_length=5, observations=observations)
    env.reset()
    for t in range(5):
        obs, _, done, extras = env.step(torch.zeros(3, 5))
        if t < 4:
            assert not done.any()
    assert done.all() and extras["time_outs"].all() and not extras["terminated"].any()
    time_col = env.obs_spec.entity_slices("privileged", "task")[0][0]
    assert torch.allclose(extras["final_obs"]["privileged"][:, time_col], torch.ones(3))  # last step of the episode
    assert torch.all(obs["privileged"][:, time_col] == 0)  # auto-reset: first obs of the next episode
    assert torch.all(env.episode_length_buf == 0)


def test_same_seed_same_trajectory_different_seed_differs(make):
    actions = random_actions(4, 40)
    runs = []
    for seed in (0, 0, 1):
        env = make("stack_pick_multi", num_envs=4, seed=seed, **ALL_ON)
        obs = [env.reset()["policy"]]
        obs += [env.step(a)[0]["policy"] for a in actions]
        runs.append(torch.stack(obs))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_get_set_state_round_trip_continues_identically_through_resets(make):
    actions = random_actions(4, 50, seed=3)
    # short episodes: every env auto-resets after the copy, so the next episodes' seeds are covered too
    a = make("stack_pick_multi", num_envs=4, seed=5, episode_length=12, **ALL_ON)
    b = make("stack_pick_multi", num_envs=4, seed=99, episode_length=12, **ALL_ON)
    a.reset(seed=5)
    b.reset(seed=99)
    for act in actions[:20]:
        a.step(act)
    b.set_state(torch.arange(4), a.get_state())
    assert torch.equal(a.get_state(), b.get_state())
    resets = torch.zeros(4, dtype=torch.long)
    for act in actions[20:]:
        oa, ra, da, ea = a.step(act)
        ob, rb, db, eb = b.step(act)
        assert torch.equal(oa["policy"], ob["policy"]) and torch.equal(oa["privileged"], ob["privileged"])
        assert torch.equal(ra, rb) and torch.equal(da, db)
        assert torch.equal(ea["attempt"], eb["attempt"])
        resets += da
    assert (resets >= 2).all()  # the copies drew the same fresh scenes, twice each
    assert torch.equal(a.get_state(), b.get_state())


def test_a_borrowed_state_keeps_the_envs_own_seed_stream(make):
    demo = make("stack_pick_multi", num_envs=2, seed=5)
    mine = make("stack_pick_multi", num_envs=2, seed=99)
    twin = make("stack_pick_multi", num_envs=2, seed=99)  # the same env that never borrowed a state
    for env, seed in ((demo, 5), (mine, 99), (twin, 99)):
        env.reset(seed=seed)
    for _ in range(3):
        demo.step(torch.zeros(2, 5))
    mine.set_state(torch.arange(2), demo.get_state(), keep_episode_counter=True)
    assert mine.base_seeds.tolist() == [99, 99]  # the demo's episode, but the env's own seed stream
    mine.reset_envs([0, 1])
    twin.reset_envs([0, 1])
    assert torch.equal(mine.get_state(), twin.get_state())  # the next scenes are the env's own


def test_set_state_rejects_a_state_from_another_task(make):
    lift = make("lift", num_envs=1)
    multi = make("stack_pick_multi", num_envs=1)
    lift.reset()
    multi.reset()
    with pytest.raises(ValueError, match="another task"):
        multi.set_state([0], lift.get_state([0]))


def test_actions_beyond_bounds_act_like_the_bound(make):
    envs = [make("lift", num_envs=4) for _ in range(2)]
    for env in envs:
        env.reset()
    signs = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]]).repeat(4, 1)
    for _ in range(10):
        o1 = envs[0].step(signs * 7.5)[0]  # raw, far outside [-1, 1]
        o2 = envs[1].step(signs)[0]
        assert torch.equal(o1["privileged"], o2["privileged"])


def test_occluded_cube_terms_are_exactly_zero_and_masked(make):
    env = make("stack_pick_multi", num_envs=8, occlusion={"rate": 1.0, "min_steps": 3, "max_steps": 3})
    env.reset()
    obs = env.step(torch.zeros(8, 5))[0]
    spec = env.obs_spec
    vis = {t.entity: t.start for t in spec.groups["policy"] if t.name == "visible"}
    pos = {t.entity: (t.start, t.end) for t in spec.groups["policy"] if t.name == "pos"}
    for cube in ("cube0", "cube1", "cube2"):
        assert torch.all(obs["policy"][:, vis[cube]] == 0)
        assert torch.all(obs["policy"][:, pos[cube][0]: pos[cube][1]] == 0)
    priv_pos = [t for t in spec.groups["privileged"] if t.entity == "cube0" and t.name == "pos"][0]
    assert torch.all(obs["privileged"][:, priv_pos.start + 2] > 0.01)  # the teacher still sees the cube
    # with occlusion off the cubes are visible
    env2 = make("stack_pick_multi", num_envs=8, occlusion={"rate": 0.0})
    env2.reset()
    obs2 = env2.step(torch.zeros(8, 5))[0]
    assert torch.all(obs2["policy"][:, vis["cube0"]] == 1)


def test_bad_env_config_values_raise_config_error():
    from envs import make_env

    for bad, problem in ((dict(num_envs=0), "env.num_envs=0 must be a positive integer"),
                         (dict(task="juggle"), "env.task='juggle' is not a task; choose one of"),
                         (dict(hidden_view="psychic"), "env.hidden_view='psychic'; choose one of"),
                         (dict(cube={"mass": [0.5, 0.1]}), r"env.cube.mass=\[0.5, 0.1\] must satisfy"),
                         (dict(n_cubes=7), "env.n_cubes=7 must be between 1 and 6 for the lift task"),
                         (dict(cube={"static_prob": 0.5}), "env.cube.static_prob > 0 needs spare cubes"),
                         (dict(n_cubes=2, cube={"static_count": 2}), r"env.cube.static_count=2 must be an integer in "
                                                                     r"\[0, 1\]"),
                         (dict(n_cubes=2, cube={"static_count": 1, "static_prob": 0.2}),
                          "static_count and env.cube.static_prob are exclusive"),
                         (dict(occlusion={"rate": 2.0}), r"env.occlusion.rate=2.0 must be a probability"),
                         (dict(observations={"policy": {"cube_colour": {}}, "privileged": {}}),
                          "env.observations.policy.cube_colour is not a term; known terms")):
        with pytest.raises(ConfigError, match=problem):
            make_env(env_config("lift", **bad))


def test_physics_blow_up_terminates_as_sim_unstable(make):
    env = make("lift", num_envs=2)
    env.reset()
    env.datas[1].qvel[6] = 1e11  # beyond MuJoCo's bound: it resets that MjData
    _, _, done, extras = env.step(torch.zeros(2, 5))
    assert extras["failure"]["sim_unstable"].tolist() == [False, True]
    assert done.tolist() == [False, True] and extras["terminated"][1]


def test_relative_yaw_terms_agree_with_the_absolute_ones(make):
    env = make("stack_pick_multi", num_envs=4)
    env.reset(seed=3)
    for action in random_actions(4, 10, seed=2):  # turn the gripper so the relative angle differs from the cube's
        obs = env.step(action)[0]["privileged"].double()
    spec = env.obs_spec

    def term(entity, name):
        (a, b), = [(t.start, t.end) for t in spec.groups["privileged"] if (t.entity, t.name) == (entity, name)]
        return obs[:, a:b]

    g = term("gripper", "yaw")[:, 0]
    assert torch.allclose(term("gripper", "heading"), torch.stack([g.sin(), g.cos()], 1), atol=1e-6)
    assert g.abs().max() > 0.05
    for c in range(3):
        s4c, c4c = term(f"cube{c}", "yaw").T
        rel = term(f"cube{c}", "yaw_rel")
        expected = torch.stack([s4c * (4 * g).cos() - c4c * (4 * g).sin(),
                                c4c * (4 * g).cos() + s4c * (4 * g).sin()], 1)
        assert torch.allclose(rel, expected, atol=1e-5)


def test_episode_length_buf_writes_in_place_and_by_assignment_reach_the_time_limit(make):
    env = make("lift", num_envs=3, episode_length=5)
    env.reset(seed=0)
    env.episode_length_buf[1] = 4  # Isaac Lab style: an in-place write into the env's own buffer
    _, _, done, extras = env.step(torch.zeros(3, 5))
    assert extras["time_outs"].tolist() == [False, True, False] and done.tolist() == [False, True, False]
    env.episode_length_buf = torch.tensor([4, 0, 3])  # rsl_rl style: assigning a fresh tensor
    _, _, done, extras = env.step(torch.zeros(3, 5))
    assert extras["time_outs"].tolist() == [True, False, False]
    assert env.episode_length_buf.tolist() == [0, 1, 4]  # the reset and the steps show in the same buffer
    env.set_state(torch.arange(3), env.get_state())
    env.episode_length_buf[2] = 4
    assert env.step(torch.zeros(3, 5))[3]["time_outs"].tolist() == [False, False, True]


def test_derived_physics_constants_follow_the_drawn_mass(make):
    light = make("lift", num_envs=1, cube={"mass": [0.05, 0.05]})
    heavy = make("lift", num_envs=1, cube={"mass": [2.0, 2.0]})
    b = heavy._body[0]
    for env, mass in ((light, 0.05), (heavy, 2.0)):
        env.reset(seed=0)
        assert env.models[0].body_subtreemass[b] == pytest.approx(mass)  # the solver's view of the cube
    assert heavy.models[0].body_invweight0[b, 0] < 0.1 * light.models[0].body_invweight0[b, 0]
    assert heavy.models[0].dof_invweight0[heavy._vadr[0]] < 0.1 * light.models[0].dof_invweight0[light._vadr[0]]
    light.set_state([0], heavy.get_state([0]))  # a restored state brings its constants along
    assert light.models[0].body_invweight0[b, 0] == heavy.models[0].body_invweight0[b, 0]


def test_a_built_env_is_ready_to_step_in_the_scenes_reset_draws(make):
    env = make("stack_pick_multi", num_envs=4, seed=7, **ALL_ON)
    built = env.get_observations()
    built_state = env.get_state()
    obs = env.reset(seed=7)
    for group in ("policy", "privileged"):
        assert torch.equal(built[group], obs[group])
    assert torch.equal(built_state, env.get_state())
    assert env.seeds.min() > 0  # episode seeds drawn, not the zero of an unsampled scene
