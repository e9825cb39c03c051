"""The numbers that describe a store, shared by the collect stage's report and ``datasets.inspect``."""

from __future__ import annotations

from datasets.store import EpisodeStore


def summarize(store: EpisodeStore) -> dict:
    meta, rejected = store.episode_meta(), store.rejected()
    attempts = meta["n_attempts"]
    reasons = {name: int((rejected["reason"] == code).sum())
               for code, name in enumerate(store.attrs.get("reject_reasons", []))}
    retry = attempts > 1
    return {
        "episodes": store.num_episodes, "steps": store.num_steps,
        "with_retry_share": float(retry.mean()) if len(attempts) else 0.0,
        "attempts_histogram": {str(k): int((attempts == k).sum()) for k in sorted(set(attempts.tolist()))},
        "rejected": reasons, "rejected_total": int(len(rejected["reason"])),
        "retries_changed_cube_share": float(meta["retry_changed_cube"][retry].mean()) if retry.any() else 0.0,
        "retries_mean_yaw_change": float(meta["retry_yaw_change"][retry].mean()) if retry.any() else 0.0,
    }
