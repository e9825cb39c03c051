"""The history student: a block-recurrent transformer over entity tokens with memory tokens.

Per control step: S tokens = one per entity (rl/student/tokens.py) [+ previous action] + one ACT token whose
output feeds the Gaussian head. Steps are grouped in blocks of K steps (counted from the episode's
start). Within a block, step t's tokens attend to
  * the M memory tokens as they were at the block's start (their keys/values at every layer come from
    a "memory pass": the memory tokens through the layers, attending only to themselves), and
  * the tokens of the block's steps <= t (causal over steps, full within a step).
When a block completes, a "write pass" (the memory tokens as queries, attending to themselves and to the
whole block at every layer) gives a candidate, and the carried memory is updated through a GTrXL-style
GRU gate (bias towards keeping the old memory; tanh keeps it in [-1, 1]) or through RMSNorm: a raw
residual stream carried block to block grows without bound (a probe: norm 400 at step 40, 11,000 at 1000).

Step mode keeps, per layer, a fixed cache of M + K*S key/value slots (the memory's, then the current
block's steps) plus a step counter; sequence mode runs the very same ``_advance`` on chunks of up to
K steps (cut at block ends and episode starts), so both modes compute the same function: only the
batching of the arithmetic differs. Cost per step is constant: at most M + K*S keys per layer,
whatever the episode's length. Episode starts reset the memory (zero tokens, empty cache, counter 0) in both modes.

P passes: the layer stack is applied P times with shared weights (depth P*L, one cache per pass-layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import ConfigError, ObsSpec
from rl.student.diagnostics import LayerProbe, attention_weights
from rl.student.head import GaussianHead, StudentMixin
from rl.student.tokens import EntityTokenizer, Normalizer, prev_action_input


@dataclass
class HistoryConfig:
    group: str = "policy"  # observation group the student reads
    action_dim: int = 5
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    mlp_ratio: float = 4.0
    n_memory: int = 4  # M carried memory tokens
    block: int = 8  # K steps per block: the KV cache never holds more
    passes: int = 1  # P applications of the (weight-shared) layer stack per step
    init: str = "safe"  # safe: residual branch output projections start at zero
    qk_norm: bool = True
    memory_update: str = "gate"  # gate (GTrXL GRU gate) | norm (RMSNorm of old + candidate)
    gate_bias: float = 1.0  # > 0: the gate starts mostly keeping the old memory
    head_hidden: list[int] = field(default_factory=lambda: [128, 128])
    obs_skip: bool = False  # the head also reads the current step's normalised observation (an MLP path)
    init_std: float | list[float] = 1.0
    prev_action: str = "off"  # off | on | dropout | noise (the copycat trap)
    prev_action_p: float = 0.5  # dropout probability or noise std (normalised units)


@dataclass
class BlockMemory:
    """Recurrent state of N envs. V = passes * n_layers, H heads, Dh head width, S tokens per step."""
    tokens: torch.Tensor  # (N, M, D) carried memory
    k: torch.Tensor  # (N, V, H, M + K*S, Dh) keys per pass-layer: slots [0, M) the memory pass's,
    #                  then step j of the current block in [M + j*S, M + (j+1)*S)
    v: torch.Tensor  # (N, V, H, M + K*S, Dh)
    count: torch.Tensor  # (N,) long: steps of the current block in the cache, 0..K-1

    def detach(self) -> BlockMemory:
        return BlockMemory(*(getattr(self, f.name).detach() for f in fields(self)))

    def select(self, mask: torch.Tensor, other: BlockMemory) -> BlockMemory:
        """Rows where mask (N,) is set from ``other``, the rest from self."""
        def pick(a, b):
            return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), b, a)
        return BlockMemory(*(pick(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def put(self, rows: torch.Tensor, other: BlockMemory) -> BlockMemory:
        """Rows ``rows`` (n,) long from ``other`` (n rows), the rest from self: out of place, autograd-safe."""
        return BlockMemory(*(getattr(self, f.name).index_put((rows,), getattr(other, f.name)) for f in fields(self)))


class Attention(nn.Module):
    def __init__(self, cfg: HistoryConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)  # the residual branch's output projection
        # QK-norm: bounded logits whatever the stream's scale, so attention cannot saturate early.
        self.q_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()

    def forward(self, h, store, mask, probe: LayerProbe | None = None, packed: tuple | None = None):
        """h (B, N, D) the normed stream; ``store(k, v)`` puts this layer's own keys/values (B, H, N, Dh)
        where they belong and returns the keys/values to attend over (B, H, C, Dh); mask (B|1, 1, N, C)
        bool. Returns the branch output (B, N, D). ``packed`` (rows, cols, B, N): h is (n, D), only the
        real tokens, token i at (rows[i], cols[i]) of the (B, N) grid; store gets (n, H, Dh)."""
        if packed is not None:
            return self._packed(h, store, mask, *packed)
        B, N, D = h.shape
        q, k, v = self.qkv(h).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, Dh)
        q = self.q_norm(q)
        keys, values = store(self.k_norm(k), v)
        if probe is None:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, N, Dh)
        else:  # SDPA returns no weights: the same attention spelled out, its output the one used
            weights = attention_weights(q, keys, mask)  # (B, H, N, C)
            probe.attention(weights)
            y = weights @ values
        return self.proj(y.transpose(1, 2).reshape(B, N, D))

    def _packed(self, h, store, mask, rows, cols, B: int, N: int):
        """The projections on the n real tokens only; the attention on the (B, N) grid (padded queries
        attend too, their outputs are dropped): a lockstep round's padding costs no projection work."""
        n, D = h.shape
        q, k, v = self.qkv(h).view(n, 3, self.n_heads, self.head_dim).unbind(1)  # (n, H, Dh)
        keys, values = store(self.k_norm(k), v)
        grid = q.new_zeros(B, N, self.n_heads, self.head_dim).index_put((rows, cols), self.q_norm(q))
        y = F.scaled_dot_product_attention(grid.transpose(1, 2), keys, values, attn_mask=mask)  # (B, H, N, Dh)
        return self.proj(y.transpose(1, 2)[rows, cols].reshape(n, D))


class Layer(nn.Module):
    """Pre-norm transformer layer whose attention reads what ``store`` gives it (a cache, a context)."""

    def __init__(self, cfg: HistoryConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.ln1, self.ln2 = nn.RMSNorm(cfg.d_model), nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.fc, self.out = nn.Linear(cfg.d_model, hidden), nn.Linear(hidden, cfg.d_model)

    def forward(self, x, store, mask, probe: LayerProbe | None = None, packed: tuple | None = None):
        a = self.attn(self.ln1(x), store, mask, probe, packed)  # (B, N, D) the attention branch
        if probe is not None:
            probe.residual("attn", a, x)
        x = x + a
        m = self.out(F.gelu(self.fc(self.ln2(x))))  # (B, N, D) the MLP branch
        if probe is not None:
            probe.residual("mlp", m, x)
        return x + m


class MemoryGate(nn.Module):
    """GTrXL's GRU gate: r = s(Wr c + Ur m), z = s(Wz c + Uz m - b), h = tanh(Wg c + Ug (r*m)),
    m' = (1 - z) m + z h. With m0 = 0 and h in [-1, 1], m stays in [-1, 1] elementwise forever."""

    def __init__(self, d: int, bias: float):
        super().__init__()
        self.w = nn.Linear(d, 3 * d)
        self.u = nn.Linear(d, 2 * d, bias=False)
        self.ug = nn.Linear(d, d, bias=False)
        self.bias = bias

    def gates(self, m, c):
        """m, c (..., D) -> the reset gate r, the update share z (..., D) and Wg c."""
        wr, wz, wg = self.w(c).chunk(3, -1)
        ur, uz = self.u(m).chunk(2, -1)
        return torch.sigmoid(wr + ur), torch.sigmoid(wz + uz - self.bias), wg

    def forward(self, m, c):
        r, z, wg = self.gates(m, c)
        return (1 - z) * m + z * torch.tanh(wg + self.ug(r * m))


class HistoryTransformer(StudentMixin, nn.Module):
    kind = "transformer"

    def __init__(self, spec: ObsSpec, cfg: HistoryConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or cfg.block < 1 or cfg.passes < 1 or cfg.n_memory < 0:
            raise ConfigError(f"bc.model: need d_model % n_heads == 0, block >= 1, passes >= 1, n_memory >= 0 "
                              f"(got {cfg})")
        if cfg.init not in ("safe", "default") or cfg.memory_update not in ("gate", "norm"):
            raise ConfigError(f"bc.model: init must be safe|default, memory_update gate|norm "
                              f"(got {cfg.init!r}, {cfg.memory_update!r})")
        self.spec, self.cfg = spec, cfg
        D, M, K = cfg.d_model, cfg.n_memory, cfg.block
        self.norm = Normalizer(spec, cfg.group, cfg.action_dim)
        self.tokenizer = EntityTokenizer(spec, cfg.group, D, cfg.action_dim if cfg.prev_action != "off" else 0)
        self.S = self.tokenizer.n_tokens + 1  # + the ACT token
        self.act_emb = nn.Parameter(0.02 * torch.randn(D))
        self.step_emb = nn.Parameter(0.02 * torch.randn(K, D))  # step's position in its block
        self.slot_emb = nn.Parameter(0.02 * torch.randn(M, D))  # tells memory slots apart (reset: all zero)
        self.write_emb = nn.Parameter(0.02 * torch.randn(D))  # marks the write pass's queries
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.ln_f, self.ln_mem = nn.RMSNorm(D), nn.RMSNorm(D)
        self.update = MemoryGate(D, cfg.gate_bias) if cfg.memory_update == "gate" else nn.RMSNorm(D)
        skip = spec.dim(cfg.group) if cfg.obs_skip else 0
        self.head = GaussianHead(D + skip, cfg.head_hidden, cfg.action_dim, cfg.init_std)
        self._init_weights()

    def _init_weights(self):
        for layer in self.layers:  # nanoGPT's init; safe: the residual branches' outputs start at zero
            for lin in (layer.attn.qkv, layer.fc, layer.attn.proj, layer.out):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            for lin in (layer.attn.proj, layer.out):
                if self.cfg.init == "safe":
                    nn.init.zeros_(lin.weight)
                else:
                    nn.init.normal_(lin.weight, std=0.02 / (2 * len(self.layers) * self.cfg.passes) ** 0.5)

    @property
    def virtual_layers(self) -> list[Layer]:
        return list(self.layers) * self.cfg.passes

    def _layer_name(self, i: int) -> str:
        """The diagnostics' name of pass-layer i: layer<l>, or pass<p>/layer<l> with P > 1."""
        n = self.cfg.n_layers
        return f"layer{i % n}" if self.cfg.passes == 1 else f"pass{i // n}/layer{i % n}"

    # ---- memory -------------------------------------------------------------------------------
    def _memory_pass(self, tokens: torch.Tensor):
        """tokens (N, M, D) -> keys, values (N, V, H, M, Dh): the memory as context for a block."""
        x = tokens + self.slot_emb  # (N, M, D)
        N, M, _ = x.shape
        H, Dh = self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads
        if M == 0:  # no memory: an empty context for every pass-layer
            return (x.new_zeros(N, len(self.virtual_layers), H, 0, Dh),) * 2
        ks, vs = [], []

        def own(k, v):  # the memory attends to itself only
            ks.append(k)
            vs.append(v)
            return k, v
        for layer in self.virtual_layers:
            x = layer(x, own, None)
        return torch.stack(ks, 1), torch.stack(vs, 1)

    def _write(self, tokens, k, v) -> torch.Tensor:
        """The next memory from the old one (N, M, D) and the complete block's step slots of the cache
        (N, V, H, K*S, Dh)."""
        x = tokens + self.slot_emb + self.write_emb  # (N, M, D) queries
        for i, layer in enumerate(self.virtual_layers):
            x = layer(x, lambda k_own, v_own, i=i: (torch.cat([k[:, i], k_own], 2), torch.cat([v[:, i], v_own], 2)),
                      None)
        candidate = self.ln_mem(x)  # a normalised candidate: its scale is the stream's, not the gate's problem
        if self.cfg.memory_update == "gate":
            if self._probe is not None:
                self._probe.memory_update(self.update.gates(tokens, candidate)[1].detach(), self.cfg.block)
            return self.update(tokens, candidate)
        return self.update(tokens + candidate)  # RMSNorm: per-token RMS equal to its weight

    def _fresh(self, tokens: torch.Tensor) -> BlockMemory:
        """A block's start: the memory pass of ``tokens`` in the memory slots, empty step slots."""
        cfg = self.cfg
        mem_k, mem_v = self._memory_pass(tokens)  # (N, V, H, M, Dh)
        steps = mem_k.new_zeros(*mem_k.shape[:3], cfg.block * self.S, mem_k.shape[-1])
        count = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return BlockMemory(tokens, torch.cat([mem_k, steps], 3), torch.cat([mem_v, steps], 3), count)

    def initial_memory(self, n: int, device=None) -> BlockMemory:
        device = device or self.act_emb.device
        return self._fresh(torch.zeros(n, self.cfg.n_memory, self.cfg.d_model, device=device))

    def reset_memory(self, memory: BlockMemory, done: torch.Tensor) -> BlockMemory:
        """Finished envs (done (N,) bool) start over: zero memory, empty cache, counter 0."""
        if not bool(done.any()):
            return memory
        # every row of a fresh memory is the same: one row's memory pass, broadcast by select's where
        return memory.select(done.to(memory.count.device), self.initial_memory(1, memory.tokens.device))

    # ---- the one computation both modes share ---------------------------------------------------
    def _step_tokens(self, obs: dict) -> torch.Tensor:
        """obs groups (..., D) -> step tokens (..., S, D), the ACT token last."""
        x = self.norm.obs(obs[self.cfg.group])
        prev = None
        if self.cfg.prev_action != "off":
            prev = prev_action_input(self.norm.action_in(obs["prev_action"]), self.cfg.prev_action,
                                     self.cfg.prev_action_p, self.training)
        tok = self.tokenizer(x, prev)  # (..., S-1, D)
        return torch.cat([tok, self.act_emb.expand(*tok.shape[:-2], 1, -1)], dim=-2)

    def _advance(self, chunk: torch.Tensor, length: torch.Tensor, memory: BlockMemory,
                 t_idx: torch.Tensor | None = None):
        """Run up to L steps of each env's current block.

        chunk (B, L, S, D) step tokens; length (B,) steps valid per row (<= K - count; padding after);
        t_idx (B, L) the steps' times in the window (only the diagnostics' step mask reads it).
        Returns (ACT outputs (B, L, D), memory after those steps)."""
        B, L, S, D = chunk.shape
        K, dev = self.cfg.block, chunk.device
        count = memory.count
        step = count[:, None] + torch.arange(L, device=dev)  # (B, L) position in the block
        x = (chunk + self.step_emb[step.clamp(max=K - 1)][:, :, None]).reshape(B, L * S, D)
        M = memory.tokens.shape[1]
        mask = self._block_mask(step.repeat_interleave(S, 1), M)  # (B, 1, L*S, M + K*S)
        # Cache slots of the chunk's valid tokens: step count + j, token s -> slot M + (count + j)*S + s.
        b, j = (torch.arange(L, device=dev)[None] < length[:, None]).nonzero(as_tuple=True)  # (n,)
        b_tok = b.repeat_interleave(S)  # (n*S,)
        src = (j[:, None] * S + torch.arange(S, device=dev)).reshape(-1)  # token within the chunk
        dst = M + ((count[b] + j)[:, None] * S + torch.arange(S, device=dev)).reshape(-1)  # slot in the cache
        ks, vs = [], []
        probe = self._probe
        if probe is not None:
            probe.begin_chunk(length, L, S, t_idx)

        # A round of forward_sequence pads rows to its longest (about half its slots): then the layers
        # run on the real tokens only (n*S, D); the probe's measurements read the (B, L*S) grid.
        packed = (b_tok, src, B, L * S) if probe is None and bool((length < L).any()) else None
        if packed is not None:
            x = x[b_tok, src]  # (n*S, D)

        def write(cache, new):  # cache (B, H, C, Dh), new (B, H, L*S, Dh) or packed (n*S, H, Dh): out of place
            new_rows = new if packed is not None else new.transpose(1, 2)[b_tok, src]  # (n*S, H, Dh)
            return cache.transpose(1, 2).index_put((b_tok, dst), new_rows).transpose(1, 2)
        for i, layer in enumerate(self.virtual_layers):
            def store(k, v, i=i):
                ks.append(write(memory.k[:, i], k))
                vs.append(write(memory.v[:, i], v))
                return ks[-1], vs[-1]
            x = layer(x, store, mask, probe.layer(self._layer_name(i)) if probe is not None else None, packed)
        if packed is not None:  # the real steps' ACT tokens back on the (B, L) grid, zeros in the padding
            out = x.new_zeros(B, L, D).index_put((b, j), self.ln_f(x).view(-1, S, D)[:, -1])
        else:
            out = self.ln_f(x).view(B, L, S, D)[:, :, -1]  # (B, L, D) the ACT tokens
        count = count + length
        return out, self._complete_blocks(BlockMemory(memory.tokens, torch.stack(ks, 1), torch.stack(vs, 1), count))

    def _block_mask(self, step: torch.Tensor, M: int) -> torch.Tensor:
        """step (B, Q): the block position of each query's step -> (B, 1, Q, M + K*S) bool over the cache's slots:
        the M memory slots always, this block's steps up to the query's own (causal over steps, full within one)."""
        B, Q = step.shape
        slot_step = torch.arange(self.cfg.block, device=step.device).repeat_interleave(self.S)  # (K*S,)
        return torch.cat([torch.ones(B, Q, M, dtype=torch.bool, device=step.device),
                          slot_step <= step[:, :, None]], -1)[:, None]

    def _complete_blocks(self, new: BlockMemory) -> BlockMemory:
        """Rows whose block just completed (count == K): write the memory from the block, start a fresh block."""
        M = new.tokens.shape[1]
        full = new.count == self.cfg.block  # (B,)
        if bool(full.all()):
            tokens = self._write(new.tokens, new.k[:, :, :, M:], new.v[:, :, :, M:]) if M > 0 else new.tokens
            return self._fresh(tokens)
        if bool(full.any()):
            # the write and memory passes of the completed rows only: envs desynchronised by their resets
            # complete blocks at different steps, so a rollout step has a few full rows, not all
            rows = full.nonzero()[:, 0]  # (n,)
            tokens = new.tokens[rows]  # (n, M, D)
            if M > 0:
                tokens = self._write(tokens, new.k[rows, :, :, M:], new.v[rows, :, :, M:])
            return new.put(rows, self._fresh(tokens))
        return new

    @torch.no_grad()
    def _step_inference(self, tokens: torch.Tensor, memory: BlockMemory):
        """``_advance`` of one step for every row, without autograd: the same arithmetic with the keys and
        values written in place into one copy of the cache, and one attention mask row per env (a rollout's or an
        evaluation's per-step pass, where ``_advance``'s general bookkeeping cost more than the layers).
        tokens (N, S, D) -> (ACT outputs (N, D), memory after the step)."""
        N, S, D = tokens.shape
        M, dev = memory.tokens.shape[1], tokens.device
        H, Dh = self.cfg.n_heads, D // self.cfg.n_heads
        count = memory.count  # (N,) the step's position in its block, < block
        x = tokens + self.step_emb[count][:, None]  # (N, S, D)
        mask = self._block_mask(count[:, None], M)  # (N, 1, 1, M + K*S): one row serves the step's S tokens
        # a copy: the caller's memory (a rollout storage may hold it) stays as it was
        k_all, v_all = memory.k.clone(), memory.v.clone()  # (N, V, H, M + K*S, Dh)
        slots = (M + count * S)[:, None, None, None] + torch.arange(S, device=dev)[None, None, :, None]
        slots = slots.expand(N, H, S, Dh)  # this step's token s -> slot M + count*S + s
        for i, layer in enumerate(self.virtual_layers):
            def store(k, v, i=i):  # (N, H, S, Dh) each
                k_all[:, i].scatter_(2, slots, k)
                v_all[:, i].scatter_(2, slots, v)
                return k_all[:, i], v_all[:, i]
            x = layer(x, store, mask)
        out = self.ln_f(x)[:, -1]  # (N, D) the ACT tokens
        return out, self._complete_blocks(BlockMemory(memory.tokens, k_all, v_all, count + 1))

    # ---- the policy interface -------------------------------------------------------------------
    def act(self, obs: dict, memory: BlockMemory | None = None):
        """One step: obs groups (N, D) -> (Normal over (N, A), memory). Call ``reset_memory`` with the
        env's done flags before the next step, as PPO does."""
        features, memory = self.step_features(obs, memory)
        return self.head(features, self.norm), memory

    def step_features(self, obs: dict, memory: BlockMemory | None = None):
        """``act`` without the head: (the head's input (N, F), memory). A shared critic reads it."""
        tokens = self._step_tokens(obs)  # (N, S, D)
        memory = memory if memory is not None else self.initial_memory(tokens.shape[0], tokens.device)
        if self._probe is None and not torch.is_grad_enabled():
            out, memory = self._step_inference(tokens, memory)  # (N, D): rollouts and evaluations
        else:
            length = torch.ones(tokens.shape[0], dtype=torch.long, device=tokens.device)
            out, memory = self._advance(tokens[:, None], length, memory)
            out = out[:, 0]
        return self._head_input(out, obs), memory

    def forward_sequence(self, obs_seq: dict, starts: torch.Tensor | None = None,
                         memory0: BlockMemory | None = None):
        """obs_seq groups (B, T, D); starts (B, T) bool: an episode starts there (memory reset before
        that step). Returns (Normal over (B, T, A), memory after the window: it may hold a partial block)."""
        features, memory = self.sequence_features(obs_seq, starts, memory0)
        return self.head(features, self.norm), memory

    def sequence_features(self, obs_seq: dict, starts: torch.Tensor | None = None,
                          memory0: BlockMemory | None = None):
        """``forward_sequence`` without the head: (the head's input (B, T, F), memory after the window).
        Chunks: each row advances to its next block end or episode start; rows proceed in lockstep
        rounds, so a window of T steps takes about T / K rounds of one parallel pass each."""
        tokens = self._step_tokens(obs_seq)  # (B, T, S, D)
        B, T, S, D = tokens.shape
        dev, K = tokens.device, self.cfg.block
        memory = memory0 if memory0 is not None else self.initial_memory(B, dev)
        starts = torch.zeros(B, T, dtype=torch.bool, device=dev) if starts is None else starts.to(dev)
        t_range = torch.arange(T, device=dev)
        # next_start[b, t]: the first start strictly after t (T if none)
        at = torch.where(starts, t_range, torch.full_like(t_range, T))  # (B, T)
        after = torch.cat([at[:, 1:], torch.full((B, 1), T, device=dev, dtype=at.dtype)], 1)
        next_start = after.flip(1).cummin(1).values.flip(1)  # (B, T)
        pos = torch.zeros(B, dtype=torch.long, device=dev)
        outs = tokens.new_zeros(B, T, D)
        while bool((pos < T).any()):
            active = pos < T
            p = pos.clamp(max=T - 1)
            # a memory pass per round that meets a start: one shared pass would sum its gradients in another
            # order, and a trained student's weights (and the pipeline's numbers) would move by float error
            memory = self.reset_memory(memory, active & starts.gather(1, p[:, None])[:, 0])
            length = torch.minimum(K - memory.count, next_start.gather(1, p[:, None])[:, 0] - pos)
            length = torch.where(active, length, torch.zeros_like(length))
            if bool((length[active] < 1).any()):  # a broken counter would loop forever
                raise RuntimeError(f"memory step counter out of range: {memory.count.tolist()} (block {K})")
            L = int(length.max())
            t_idx = (pos[:, None] + torch.arange(L, device=dev)).clamp(max=T - 1)  # (B, L)
            chunk = tokens.gather(1, t_idx[:, :, None, None].expand(B, L, S, D))  # (B, L, S, D)
            out, memory = self._advance(chunk, length, memory, t_idx)
            b, j = (torch.arange(L, device=dev)[None] < length[:, None]).nonzero(as_tuple=True)
            outs = outs.index_put((b, pos[b] + j), out[b, j])
            pos = pos + length
        return self._head_input(outs, obs_seq), memory

    def _head_input(self, act_out: torch.Tensor, obs: dict) -> torch.Tensor:
        """ACT token outputs (..., D) [+ the step's normalised observation (..., obs_dim) with obs_skip:
        the head then starts as an MLP student on the current step, and history adds to it]."""
        if not self.cfg.obs_skip:
            return act_out
        return torch.cat([act_out, self.norm.obs(obs[self.cfg.group])], -1)

    def forward(self, obs_seq: dict, starts: torch.Tensor | None = None, memory0=None):
        return self.forward_sequence(obs_seq, starts, memory0)

    def memory_vectors(self, memory: BlockMemory) -> torch.Tensor:
        return memory.tokens  # (N, M, D): the carried memory tokens, one norm each


_KINDS = ("transformer", "mlp", "rnn")


def build_student(kind: str, spec: ObsSpec, cfg: dict | None = None) -> nn.Module:
    """kind: transformer | mlp | rnn; cfg: that kind's config fields (unknown keys: ConfigError)."""
    from rl.student.baselines import LSTMStudent, MLPStudent, StudentConfig
    classes = {"transformer": (HistoryTransformer, HistoryConfig), "mlp": (MLPStudent, StudentConfig),
               "rnn": (LSTMStudent, StudentConfig)}
    if kind not in classes:
        raise ConfigError(f"bc.model={kind!r}; choose one of {_KINDS}")
    model_cls, cfg_cls = classes[kind]
    cfg = dict(cfg or {})
    unknown = set(cfg) - {f.name for f in fields(cfg_cls)}
    if unknown:
        known = [f.name for f in fields(cfg_cls)]
        raise ConfigError(f"bc.model={kind}: unknown config keys {sorted(unknown)}; known: {known}")
    return model_cls(spec, cfg_cls(**cfg))


def student_from_config(d: dict) -> nn.Module:
    """Rebuild a student from its ``config_dict()`` (then load its state_dict)."""
    return build_student(d["kind"], ObsSpec.from_dict(d["spec"]), d["cfg"])
