#!/usr/bin/env bash
# Continue training the shipped TinyWorld v2 model on one H100/H200 (16 cores) in about 7.5 minutes
# (`--preset gpu`: the UNet + text encoder at 8x the CPU batch) and export it in diffusers layout
# (every file <= 16 MiB; 18 MiB in all).
#
# Prepared for the device machine, which has Python 3.12, torch and transformers but neither
# diffusers nor Mitsuba: the training set is rendered beforehand on the CPU machine and carried
# as a JPEG pack (`handles world pack --jpeg-quality 95`: ~11.5 MiB per 1000 scenes at 128 px, so
# ~2900 scenes fit beside the working tree), with the diffusers wheel:
#
#   pip download diffusers==$(python -c "import diffusers; print(diffusers.__version__)") --no-deps \
#       --only-binary=:all: --python-version 3.12 -d runs/wheels          # 6.4 MB, once
#   handles world dataset --seeds A:B --out runs/world3/new.npz             # a seed range no training run used
#   handles world pack runs/world3/all.npz runs/world3/train_q95.npz --jpeg-quality 95
#   # then, on the device machine (carry runs/wheels and runs/world3/train_q95.npz):
#   bash src/diffusion_handles/world/gpu_train.sh runs/world3/train_q95.npz runs/wheels "$OUT/model"
#
# Or render fresh scenes on the device machine itself (its 16 cores), with a trimmed Mitsuba that
# carries in 14 MB (`handles world bundle-renderer`, renders bit for bit as the full install):
#
#   pip download mitsuba==3.9.1 drjit==1.5.0 --no-deps --only-binary=:all: --python-version 3.12 -d W
#   handles world bundle-renderer --wheels W --out runs/wheels/mitsuba-scalar-rgb-cp312.tar.xz
#   # on the device machine, before this script:
#   mkdir -p /tmp/mi && tar xJf runs/wheels/mitsuba-scalar-rgb-cp312.tar.xz -C /tmp/mi
#   PYTHONPATH=/tmp/mi:src python3 -m diffusion_handles world dataset --seeds A:B --workers 14 --out /tmp/fresh.npz
#
# Afterwards, on the CPU machine: `handles world leak-prior --model DIR --data TRAIN.npz --out DIR2`
# (the brightness its generations start from, fitted on the training set in about 9 minutes),
# `handles world eval --model DIR2 --first-seed S` on held-out seeds, and ship the model if it
# beats the one in src/diffusion_handles/world/model/.
# Extra arguments go to `handles world train` (e.g. --unet-dropout 0.1, or --device cpu
# --unet-steps 1 for a smoke test). Two runs fit on one GPU side by side (different RUN_DIR),
# e.g. the UNet run and an encoder run (`--stage encoder --encoder-width 2 --encoder-steps 100000`:
# the VAE encoder, twice as wide, against the frozen decoder; the same pack serves both).
set -euo pipefail
data=${1:?usage: gpu_train.sh DATA.npz WHEELS_DIR OUT_DIR}
wheels=${2:?usage: gpu_train.sh DATA.npz WHEELS_DIR OUT_DIR}
out=${3:?usage: gpu_train.sh DATA.npz WHEELS_DIR OUT_DIR}
shift 3  # anything else goes to `handles world train` (the tests shrink the run with it)
py=${PYTHON:-python3}  # the device machine's PyTorch is its python3
"$py" -c "import diffusers" 2>/dev/null || "$py" -m pip install -q --no-deps --no-index "$wheels"/diffusers-*.whl
export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 570 "$py" -m diffusion_handles world train --preset gpu --data "$data" \
    --run-dir "${RUN_DIR:-/tmp/tinyworld-gpu}" --export "$out" "$@"
echo "trained and exported in $(( $(date +%s) - start )) s"
find "$out" -type f -printf '%s %p\n' | sort -n | tail -3
