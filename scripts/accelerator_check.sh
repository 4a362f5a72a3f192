#!/usr/bin/env bash
# Speed of this project on whatever backend JAX finds (GPU, TPU or CPU), against the same machine's CPU.
#   1. `benchmark` (DDTF, K-SVD and our Batch-OMP against scikit-learn's, with the NumPy references) at each
#      size in SIZES;
#   2. the learned models' denoise (the bundled general autoencoder) and train step (the default
#      autoencoder, batch BATCH) at each size, steady state after a warm-up call;
#   3. a short general-model training (`train_autoencoder --config.preset=general`, TRAIN_STEPS steps).
# When the default backend is not the CPU, everything runs a second time with JAX_PLATFORMS=cpu and the
# table gives backend/CPU ratios. Writes OUT/<backend>/... and OUT/summary.md; prints the summary.
# usage: scripts/accelerator_check.sh [OUT]
#   env: SIZES="128 256" N_IMAGES=64 BATCH=16 TRAIN_STEPS=200 PYTHON=(.venv/bin/python or python3)
#        TRAIN_ARGS="--config.pool_size=16" (more keys for the general-model training; a quick CPU try)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/accelerator_check}
sizes=${SIZES:-128 256}
n_images=${N_IMAGES:-64}
batch=${BATCH:-16}
train_steps=${TRAIN_STEPS:-200}
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$out"
backend=$("$py" -c "import jax; print(jax.default_backend())" 2>/dev/null)
passes=("$backend")
[ "$backend" != cpu ] && passes+=(cpu)

learned() {  # learned SIZE -> JSON {denoise_images_per_s, train_images_per_s} of the learned models
  "$py" - "$1" "$n_images" "$batch" <<'PY'
import json, sys, time
import jax, numpy as np
from flax import nnx
from cryojax_denoise import sharding as sh
from cryojax_denoise.training import restore, train

size, n, batch = (int(v) for v in sys.argv[1:4])

def rate(fn, images, repeats=3):  # images/s of fn() (blocks on its result), best of `repeats` after a warm-up
  jax.block_until_ready(fn())
  best = min(_timed(fn) for _ in range(repeats))
  return images / best

def _timed(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0

rng = np.random.default_rng(0)
noisy = rng.normal(size=(n, size, size)).astype(np.float32)
den = restore.load_denoiser(batch_size=n)  # the bundled general autoencoder, one chunk of n images
out = {"denoise_images_per_s": rate(lambda: den(noisy), n)}
config = train.default_config("autoencoder")
config.image_size, config.batch_size = size, batch
config = train.resolve(config)
mesh = sh.data_mesh()
graphdef, state = nnx.split(train.Learner(config, seed=0))
state = jax.device_put(state, sh.replicated(mesh))
step = train.make_train_step(graphdef, config, mesh)
x = sh.shard_host_batch(rng.normal(size=(batch, size, size)).astype(np.float32), sh.batch_sharding(mesh))
holder = {"state": state}

def one_step():
  holder["state"], losses = step(holder["state"], x, x)
  return losses

out["train_images_per_s"] = rate(one_step, batch)
print(json.dumps(out))
PY
}

for pass in "${passes[@]}"; do
  dir="$out/$pass"
  mkdir -p "$dir"
  run() { if [ "$pass" = cpu ]; then JAX_PLATFORMS=cpu "$@"; else "$@"; fi; }
  for size in $sizes; do
    echo "[$pass] benchmark ${size}²" >&2
    run "$py" launch.py --experiment=benchmark --workdir="$dir/benchmark_$size" --config.image_size="$size" \
      --config.n_images="$n_images" "--config.methods=('ddtf','ksvd')" --config.aspire_python= \
      > "$dir/benchmark_$size.log" 2>&1 || { tail -5 "$dir/benchmark_$size.log"; exit 1; }
    echo "[$pass] learned models ${size}²" >&2
    run learned "$size" > "$dir/learned_$size.json" 2> "$dir/learned_$size.log" || { tail -5 "$dir/learned_$size.log"; exit 1; }
  done
  echo "[$pass] general-model training, $train_steps steps" >&2
  rm -rf "$dir/general"
  run "$py" launch.py --experiment=train_autoencoder --workdir="$dir/general" --config.preset=general \
    --config.steps="$train_steps" --config.log_every="$((train_steps / 2))" --config.eval_every="$train_steps" \
    --config.checkpoint_every="$train_steps" ${TRAIN_ARGS:-} > "$dir/general.log" 2>&1 || { tail -5 "$dir/general.log"; exit 1; }
done

"$py" - "$out" "$backend" "$batch" $sizes <<'PY' | tee "$out/summary.md"
import json, os, sys
out, backend, batch, sizes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def figures(pass_):
  d, rows = os.path.join(out, pass_), {}
  for s in sizes:
    bench = json.load(open(os.path.join(d, f"benchmark_{s}", "benchmark.json")))
    for r in bench["rows"]:
      rows[(f"{r['method']} denoise", s)] = r["images_per_s"], "images/s"
      if "ours_patches_per_s" in (r.get("reference") or {}):
        rows[("Batch-OMP (8 atoms)", s)] = r["reference"]["ours_patches_per_s"], "patches/s"
    learned = json.load(open(os.path.join(d, f"learned_{s}.json")))
    rows[("general autoencoder denoise", s)] = learned["denoise_images_per_s"], "images/s"
    rows[("autoencoder train step", s)] = learned["train_images_per_s"], "images/s"
  metrics = [json.loads(line) for line in open(os.path.join(d, "general", "metrics.jsonl"))]
  rows[("general-model training (preset)", "64")] = metrics[-1]["steps_per_s"] * 16, "images/s"
  return rows

here = figures(backend)
cpu = figures("cpu") if backend != "cpu" else here
print(f"| what | size | {backend} | CPU | {backend}/CPU | unit |\n|---|---|---|---|---|---|")
for (what, s), (v, unit) in here.items():
  c = cpu.get((what, s), (float("nan"), unit))[0]
  print(f"| {what} | {s}² | {v:.4g} | {c:.4g} | {v / c:.3g} | {unit} |")
print(f"\nbackend {backend}; learned train step at batch {batch}; general-model training: the preset's batch of 16 "
      "at 64², rate of its last logged interval.")
PY
