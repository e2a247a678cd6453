#!/usr/bin/env bash
# Render fresh TinyWorld training scenes on the device machine, for a fixed time, into one pack.
#
# The device machine has 16 cores and no Mitsuba; `handles world bundle-renderer` makes a trimmed
# Mitsuba (14.4 MB for Python 3.12) that renders bit for bit as the full install. Scenes are
# rendered in chunks of CHUNK seeds from FIRST_SEED on, until SECONDS have passed (a chunk still
# running then is dropped) or MAX_SCENES are done, then merged into OUT.npz (lossless), which
# gpu_train.sh takes as its DATA:
#
#   bash src/diffusion_handles/world/gpu_render.sh runs/wheels/mitsuba-scalar-rgb-cp312.tar.xz 4500 200 /tmp/fresh.npz
#   bash src/diffusion_handles/world/gpu_train.sh /tmp/fresh.npz runs/wheels "$OUT/model"
#
# BUNDLE is the .tar.xz or the folder it unpacks to. Extra arguments go to `handles world dataset`
# (the tests shrink the renders with --size 32 --spp 2). Environment: CHUNK (default 400), WORKERS
# (default: every core), MAX_SCENES (default: no limit), PYTHON (default python3).
set -euo pipefail
usage="usage: gpu_render.sh BUNDLE FIRST_SEED SECONDS OUT.npz [dataset flags]"
bundle=${1:?$usage}
first=${2:?$usage}
seconds=${3:?$usage}
out=${4:?$usage}
shift 4
py=${PYTHON:-python3}
chunk=${CHUNK:-400}
workers=${WORKERS:-$(nproc)}
max=${MAX_SCENES:-0}
if [ -d "$bundle" ]; then
  mi=$bundle
else
  mi=$(mktemp -d /tmp/mitsuba-bundle.XXXXXX)
  tar xJf "$bundle" -C "$mi"
fi
export PYTHONPATH="$mi:$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
parts=$(mktemp -d /tmp/tinyworld-parts.XXXXXX)
deadline=$(( $(date +%s) + seconds ))
a=$first
files=()
while :; do
  left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 0 ] || break
  b=$(( a + chunk ))
  if [ "$max" -gt 0 ] && [ $(( b - first )) -gt "$max" ]; then b=$(( first + max )); fi
  [ "$b" -gt "$a" ] || break
  if timeout "$left" "$py" -m diffusion_handles world dataset --seeds "$a:$b" --workers "$workers" \
      --out "$parts/part_$a.npz" "$@" > "$parts/part_$a.log" 2>&1; then
    files+=("$parts/part_$a.npz")
    echo "rendered seeds $a:$b ($(( $(date +%s) - deadline + seconds )) s)"
  else
    echo "seeds $a:$b not finished in time: dropped"
    break
  fi
  a=$b
done
if [ ${#files[@]} -eq 0 ]; then
  echo "gpu_render.sh: no chunk finished in $seconds s (see $parts/*.log)" >&2
  exit 1
fi
"$py" -m diffusion_handles world pack "${files[@]}" "$out"
