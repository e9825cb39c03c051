"""The pipeline's config schema: typed dataclasses that Hydra composes every yaml onto.

Why a schema: Hydra refuses a wrong type (``collect.num_episodes=abc``) or an unknown key while it
composes, before any stage runs, with the key in its error. Ranges and choices, which a type cannot
say, are declared beside each field (``spec(...)``) and checked by ``check_ranges`` right after.

The yamls under ``configs/`` stay the only place of the defaults: schema fields are ``MISSING``
unless a yaml may leave them out. To add a key: add it to the group's yaml (its default) and here
(its type, and its range with ``spec``); a key in one and not the other is refused by Hydra or
caught by ``tests/test_config.py``. A group with several shapes (teacher) gets one schema per
option, named in that option's yaml ``defaults`` (``- /schema/teacher@_here_: ppo``).

The env group reuses the env's own dataclass (``envs.mujoco.config.TaskConfig``) for the types; its
ranges are checked by ``parse_task_config``, the env's one validator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from envs.base import ConfigError
from envs.mujoco.config import PerturbationCfg, TaskConfig, parse_task_config

STAGE_ORDER = ("teacher", "collect", "bc", "finetune", "eval")  # stage=all runs them in this order


@dataclass(frozen=True)
class Allowed:
    """What a field accepts beyond its type: bounds (``ge``/``gt``/``le``) or a set of choices."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()

    def ok(self, value: Any) -> bool:
        if value is None:  # Optional fields: None means "not set" (e.g. the run directory's default path)
            return True
        if self.choices:
            return value in self.choices
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def describe(self) -> str:
        if self.choices:
            return f"choose one of {', '.join(self.choices)}"
        bounds = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                  f"<= {self.le:g}" if self.le is not None else ""]
        return "allowed: " + " and ".join(b for b in bounds if b)


def spec(default: Any = MISSING, **allowed) -> Any:
    """A schema field with its range or choices in the field's metadata (read by ``check_ranges``)."""
    return field(default=default, metadata={"allowed": Allowed(**allowed)})


def count(default: Any = MISSING) -> Any:
    return spec(default, ge=1)


def rate(default: Any = MISSING) -> Any:
    return spec(default, ge=0.0, le=1.0)


def positive(default: Any = MISSING) -> Any:
    return spec(default, gt=0.0)


@dataclass
class EnvSchema(TaskConfig):
    simulator: str = spec("mujoco", choices=("mujoco", "isaaclab"))
    sim_device: str = "cpu"


@dataclass
class TeacherSchema:
    """The keys every teacher has (``teacher=scripted`` has only these)."""

    kind: str = spec(choices=("ppo", "scripted"))
    resume: bool = MISSING
    eval_episodes: int = count()
    # The PPO budget; here too so that a preset can set it whichever teacher is chosen. The scripted
    # expert does not train and ignores it.
    iterations: int | None = count(None)


@dataclass
class PPOSchema:
    learning_rate: float = positive()
    schedule: str = spec(choices=("adaptive", "fixed"))
    desired_kl: float = positive()
    lr_min: float = positive()
    gamma: float = rate()
    lam: float = rate()
    clip_param: float = positive()
    num_epochs: int = count()
    num_minibatches: int = count()
    value_loss_coef: float = spec(ge=0.0)
    use_clipped_value_loss: bool = MISSING
    entropy_coef: float = spec(ge=0.0)
    max_grad_norm: float = positive()
    bc_coef: float = spec(ge=0.0)
    bc_decay: float = rate()
    bounds_coef: float = spec(ge=0.0)


@dataclass
class FinetunePPOSchema(PPOSchema):
    teacher_coef: float = spec(ge=0.0)
    teacher_decay: float = rate()


@dataclass
class WarmStartSchema:
    enabled: bool = MISSING
    expert_steps: int = count()
    bc_steps: int = count()
    batch_size: int = count()
    learning_rate: float = positive()
    critic_warmup_iterations: int = spec(ge=0)
    ppo_learning_rate: float = positive()
    freeze_normalizer: bool = MISSING


@dataclass
class SelectSchema:
    every: int = spec(ge=0)  # 0: off
    episodes: int = count()


@dataclass
class FinetuneSelectSchema(SelectSchema):
    confirm_top: int = spec(ge=0)  # 0 or 1: no confirmation
    confirm_episodes: int = spec(ge=0)


@dataclass
class CurriculumSchema:
    expert_state_share: float = rate()
    adaptive: bool = MISSING
    start: int = spec(ge=0)
    band: int = count()
    advance: int = count()
    advance_at: float = rate()
    min_episodes: int = count()
    budget_factor: float = positive()
    budget_extra: int = spec(ge=0)
    pool_rounds: int = count()
    pool_seed_offset: int = spec(ge=0)


@dataclass
class PPOTeacherSchema(TeacherSchema):
    kind: str = spec(choices=("ppo",))
    iterations: int = count()
    obs_group: str = spec(choices=("policy", "privileged"))
    num_envs: int = count()
    steps_per_env: int = count()
    save_every: int = count()
    actor_hidden: list[int] = MISSING
    critic_hidden: list[int] = MISSING
    init_std: float = positive()
    sort_cubes: bool = MISSING
    ppo: PPOSchema = MISSING
    warm_start: WarmStartSchema = MISSING
    select: SelectSchema = MISSING
    curriculum: CurriculumSchema = MISSING
    # merged into env.perturbations: typed and ranged there, by the env's own schema (precheck)
    train_perturbations: dict[str, Any] = MISSING


@dataclass
class ScriptedTeacherSchema(TeacherSchema):
    kind: str = spec(choices=("scripted",))


@dataclass
class CollectSchema:
    teacher_ckpt: str | None = MISSING
    num_episodes: int = count()
    out: str | None = MISSING
    workers: int = count()
    flush_every: int = count()
    num_envs: int = count()
    max_attempts: int = count()
    retry_share_target: float | None = rate()
    actor: str | None = MISSING
    keep: str = spec(choices=("success", "all"))
    perturbations: dict[str, Any] = MISSING  # merged into env.perturbations, checked there (precheck)


PREV_ACTION = ("off", "on", "dropout", "noise")


@dataclass
class BCTransformerSchema:  # rl/student/model.py HistoryConfig
    d_model: int = count()
    n_heads: int = count()
    n_layers: int = count()
    mlp_ratio: float = positive()
    n_memory: int = spec(ge=0)
    block: int = count()
    passes: int = count()
    init: str = spec(choices=("safe", "default"))
    qk_norm: bool = MISSING
    memory_update: str = spec(choices=("gate", "norm"))
    gate_bias: float = MISSING
    head_hidden: list[int] = MISSING
    obs_skip: bool = MISSING
    prev_action: str = spec(choices=PREV_ACTION)
    prev_action_p: float = spec(ge=0.0)


@dataclass
class BCMLPSchema:  # rl/student/baselines.py StudentConfig
    hidden: list[int] = MISSING
    head_hidden: list[int] = MISSING
    prev_action: str = spec(choices=PREV_ACTION)
    prev_action_p: float = spec(ge=0.0)


@dataclass
class BCRNNSchema(BCMLPSchema):
    rnn_hidden: int = count()
    rnn_layers: int = count()


@dataclass
class BCSchema:
    dataset: str | None = MISSING
    extra_datasets: list[str] = MISSING
    init_ckpt: str | None = MISSING
    num_episodes: int | None = count(None)
    model: str = spec(choices=("transformer", "mlp", "rnn"))
    baselines: list[str] = MISSING
    resume: bool = MISSING
    window: int = count()
    window_stride: int = count()
    burn_in: int = spec(ge=0)
    memory_start: str = spec(choices=("burn_in", "carry", "episodes"))
    aux_hidden_weight: float = spec(ge=0.0)
    val_fraction: float = spec(ge=0.0, le=0.5)
    perturbed_steps: str = spec(choices=("keep", "mask"))
    num_workers: int = spec(ge=0)
    epochs: int = count()
    max_steps: int | None = count(None)
    batch_size: int = count()
    lr: float = positive()
    weight_decay: float = spec(ge=0.0)
    warmup_steps: int = spec(ge=0)
    grad_clip: float = positive()
    mse_weight: float = spec(ge=0.0)
    precision: str = spec(choices=("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "bf16-true"))
    accelerator: str = spec(choices=("cpu", "gpu", "cuda", "auto"))
    devices: int = count()
    strategy: str = spec(choices=("auto", "ddp", "ddp_spawn"))
    eval_every: int = spec(ge=0)
    eval_episodes: int = count()
    log_every: int = count()
    diag_every: int = spec(ge=0)
    progress: bool = MISSING
    transformer: BCTransformerSchema = MISSING
    mlp: BCMLPSchema = MISSING
    rnn: BCRNNSchema = MISSING


@dataclass
class FinetuneSchema:
    init_ckpt: str | None = MISSING
    dataset: str | None = MISSING
    imitation: str = spec(choices=("auto", "teacher", "demos", "off"))
    teacher_ckpt: str | None = MISSING
    resume: bool = MISSING
    critic: str = spec(choices=("shared", "privileged"))
    value_grad_to_trunk: bool = MISSING
    advantage: str = spec(choices=("gae", "group"))
    group_size: int = count()
    num_envs: int = count()
    steps_per_env: int = count()
    seq_len: int = count()
    iterations: int = count()
    save_every: int = count()
    critic_warmup_iterations: int = spec(ge=0)
    actor_learning_rate: float = positive()
    critic_hidden: list[int] = MISSING
    init_std: float | None = spec(None, gt=0.0)
    demo_reset_prob: float = rate()
    imitation_burn_in: int = spec(ge=0)
    diag_every: int = spec(ge=0)
    progress: bool = MISSING
    ppo: FinetunePPOSchema = MISSING
    select: FinetuneSelectSchema = MISSING
    eval_episodes: int = count()
    train_perturbations: dict[str, Any] = MISSING  # merged into env.perturbations, checked there (precheck)


@dataclass
class EvalSchema:
    ckpt: str | None = MISSING
    num_episodes: int = count()
    num_envs: int = count()
    simulators: list[str] | None = MISSING  # checked by evaluation.stage.simulators
    videos: int = spec(ge=0)
    perturbations: dict[str, Any] = MISSING  # merged into env.perturbations, checked there (precheck)


@dataclass
class LoggerSchema:
    mode: str = spec(choices=("offline", "online", "disabled"))
    project: str = MISSING


@dataclass
class PipelineSchema:
    stage: str = spec(choices=(*STAGE_ORDER, "all"))
    seed: int = spec(ge=0)
    overwrite: bool = MISSING
    threads: int = spec(ge=0)
    run_dir: str = MISSING
    preset_name: str = MISSING  # set by the preset group (configs/preset/*.yaml, package _global_)
    env: EnvSchema = MISSING
    teacher: TeacherSchema = MISSING
    collect: CollectSchema = MISSING
    bc: BCSchema = MISSING
    finetune: FinetuneSchema = MISSING
    eval: EvalSchema = MISSING
    logger: LoggerSchema = MISSING


def register() -> None:
    """Put the schemas in Hydra's ConfigStore under the names the yamls' ``defaults`` use."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=PipelineSchema)
    cs.store(group="schema/teacher", name="ppo", node=PPOTeacherSchema)
    cs.store(group="schema/teacher", name="scripted", node=ScriptedTeacherSchema)


def check_ranges(node: DictConfig, prefix: str = "") -> None:
    """Walk a composed config and raise ConfigError at the first value outside its field's range."""
    schema = OmegaConf.get_type(node)
    specs = {f.name: f.metadata["allowed"] for f in fields(schema) if "allowed" in f.metadata} \
        if is_dataclass(schema) else {}
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    for key in node:
        value = node[key]
        name = f"{prefix}{key}"
        if known is not None and key not in known:  # added with +key=value, which Hydra lets through
            raise ConfigError(f"{name} is not a config key; the keys of {prefix[:-1] or 'the top level'} are: "
                              f"{', '.join(f.name for f in fields(schema))}")
        if isinstance(value, DictConfig):
            check_ranges(value, f"{name}.")
        elif key in specs and not specs[key].ok(value):
            problem = "is not allowed" if specs[key].choices else "is out of range"
            raise ConfigError(f"{name}={value!r} {problem}; {specs[key].describe()}")


def allowed_in(schema: Any, key: Any) -> str:
    """What the schema class ``schema`` allows for its field ``key`` ('' if nothing beyond the type)."""
    found = {f.name: f for f in fields(schema)}.get(key) if is_dataclass(schema) else None
    return found.metadata["allowed"].describe() if found is not None and "allowed" in found.metadata else ""


def explain(exc: BaseException, overrides: Sequence[str] = (), prefix: str = "") -> str | None:
    """One line for the OmegaConf type or key error in ``exc``'s cause chain (None if there is none):
    Hydra's own message names the override, not the key, the value or what the key accepts."""
    err: BaseException | None = exc
    while err is not None and not (isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None)):
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    key = f"{prefix}{err.full_key}"
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    if isinstance(err, (ConfigAttributeError, ConfigKeyError)):
        parent = key.rpartition(".")[0]
        parent_node = err.parent_node
        known = ", ".join(f.name for f in fields(err.object_type)) if is_dataclass(err.object_type) \
            else ", ".join(map(str, parent_node.keys())) if isinstance(parent_node, DictConfig) else ""
        return (f"{key} is not a config key{f' ({given})' if given else ''}; the keys of "
                f"{parent or 'the top level'} are: {known}")
    first = str(err.msg).strip().splitlines()[0]
    allowed = allowed_in(err.object_type, err.key)
    return f"{key}={err.value!r} has the wrong type ({first}){f'; {allowed}' if allowed else ''}"


def check_env(env: DictConfig, overlays: dict[str, Any]) -> None:
    """The env group and each perturbation overlay a stage merges into ``env.perturbations`` (name ->
    node: ``collect.perturbations``, ``teacher.train_perturbations``), as the stage will see them:
    types by the env's dataclass, ranges by ``parse_task_config`` (the env's one validator)."""
    base = OmegaConf.to_container(env, resolve=True)
    if base.get("simulator") == "isaaclab":  # before the run directory is made: nothing written
        from envs.isaaclab import require_isaaclab

        require_isaaclab()
    base.pop("simulator", None)
    base.pop("sim_device", None)
    parse_task_config(base)
    for source, overlay in overlays.items():
        try:  # the overlay alone: its own keys in the error, not env.perturbations.*
            extra = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(PerturbationCfg), overlay))
        except OmegaConfBaseException as exc:
            raise ConfigError(explain(exc, prefix=f"{source}.") or str(exc).splitlines()[0]) from None
        extra = {k: v for k, v in extra.items() if k in overlay}
        try:
            parse_task_config({**base, "perturbations": {**base["perturbations"], **extra}})
        except ConfigError as exc:
            message = str(exc)
            for k in extra:
                message = message.replace(f"env.perturbations.{k}", f"{source}.{k}")
            raise ConfigError(message) from None
