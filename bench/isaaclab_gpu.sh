#!/usr/bin/env bash
# The Isaac Lab GPU check (issue #16), one short script for a lent GPU machine; a few minutes there.
#   bench/isaaclab_gpu.sh                       # cuda:0, 4096 envs
#   SIM_DEVICE=cpu NUM_ENVS=8 ITERATIONS=2 EPISODES=1 bench/isaaclab_gpu.sh   # the same path, tiny, on a CPU
# 1. the scripted expert in MuJoCo and in Isaac Lab on SIM_DEVICE (success, env-steps/s);
# 2. our PPO against rsl-rl-lib's OnPolicyRunner on Lift-v1 in Isaac Lab on SIM_DEVICE, side by side:
#    env steps/s and success after the same budget.
# Needs .venv-isaaclab (make isaaclab). Results: $OUT (default bench/results/isaaclab_gpu/), one JSON each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-isaaclab/bin/python}
SIM_DEVICE=${SIM_DEVICE:-cuda:0}
NUM_ENVS=${NUM_ENVS:-4096}
ITERATIONS=${ITERATIONS:-50}
EPISODES=${EPISODES:-1}
OUT=${OUT:-bench/results/isaaclab_gpu}
mkdir -p "$OUT"
test -x "$PY" || { echo "bench/isaaclab_gpu.sh: $PY not found; run make isaaclab first"; exit 2; }
"$PY" -c "import torch, sys; d = '$SIM_DEVICE'; sys.exit(0 if d == 'cpu' or torch.cuda.is_available() else 3)" \
  || { echo "bench/isaaclab_gpu.sh: SIM_DEVICE=$SIM_DEVICE but torch sees no GPU"; exit 2; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
"$PY" bench/isaaclab_scripted.py --env lift --envs "$NUM_ENVS" --episodes "$EPISODES" --sim-device "$SIM_DEVICE" \
  --out "$OUT/scripted.json" | tail -4
"$PY" bench/ppo_vs_rsl_rl.py --simulator isaaclab --sim-device "$SIM_DEVICE" --num-envs "$NUM_ENVS" \
  --iterations "$ITERATIONS" --eval-every "$ITERATIONS" --eval-episodes 64 --seeds 0 --out "$OUT/ppo_vs_rsl_rl.json" | tail -3
