#!/usr/bin/env bash
# Trains the general models on one accelerator within a wall-clock budget, for candidate architectures at
# once (one process each, sharing the device), and packs the exports as OUT/<name>.tgz (autoencoder_general/
# as soon as it is trained, then with gan_general/; each with its metrics.jsonl) beside OUT/<name>.log.
#   1. a 120-step probe (PROBE_STEPS) per candidate measures its steps/s;
#   2. the autoencoder trains AE_MIN minutes' worth of steps (cosine schedule over exactly that many
#      steps, so the count is reproducible: it is printed and saved in the checkpoint's config);
#   3. the GAN fine-tunes from it for GAN_STEPS steps (or GAN_MIN minutes, whichever ends first).
# usage: scripts/device_train_general.sh OUT AE_MIN GAN_STEPS GAN_MIN NAME="EXTRA ARGS" [NAME="..."]
# e.g.   scripts/device_train_general.sh /tmp/out 4.3 800 1.2 unet="" pix2pix="--config.model.arch=pix2pix"
set -uo pipefail
out=$1 ae_min=$2 gan_steps=$3 gan_min=$4
shift 4
py=${PYTHON:-python3}
probe_steps=${PROBE_STEPS:-120}
cd "$(dirname "$0")/.."
mkdir -p "$out"
n=$#
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $n, 2))")

probe() {  # probe NAME EXTRA -> steps/s of the last logged interval
  "$py" launch.py --experiment=train_autoencoder --workdir="/tmp/probe_$1" --config.preset=general \
    --config.steps=$probe_steps --config.log_every=$((probe_steps / 3)) --config.eval_every=$probe_steps \
    --config.checkpoint_every=$probe_steps $2 \
    > "/tmp/probe_$1.log" 2>&1
  "$py" -c "import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])['steps_per_s'])" \
    "/tmp/probe_$1/metrics.jsonl"
}

train_one() {  # train_one NAME EXTRA
  local name=$1 extra=$2 rate steps
  rate=$(probe "$name" "$extra") || { echo "$name: probe failed"; tail -5 "/tmp/probe_$name.log"; return 1; }
  steps=$("$py" -c "print(int($rate * 60 * $ae_min))")
  echo "$name: $rate steps/s -> autoencoder steps=$steps"
  "$py" launch.py --experiment=train_autoencoder --workdir="/tmp/$name/general_autoencoder" \
    --config.preset=general --config.steps="$steps" --config.lr_decay=cosine \
    --config.time_limit_min="$("$py" -c "print($ae_min * 1.25)")" $extra > "$out/${name}.log" 2>&1
  "$py" -c "import sys; from cryojax_denoise.training import restore; restore.export_generator(sys.argv[1], sys.argv[2])" \
    "/tmp/$name/general_autoencoder" "/tmp/$name/export/autoencoder_general"
  tar czf "$out/${name}.tgz" -C "/tmp/$name/export" autoencoder_general
  "$py" launch.py --experiment=train_gan --workdir="/tmp/$name/general_gan" --config.preset=general \
    --config.init="/tmp/$name/export/autoencoder_general" --config.steps="$gan_steps" \
    --config.time_limit_min="$gan_min" >> "$out/${name}.log" 2>&1
  "$py" -c "import sys; from cryojax_denoise.training import restore; restore.export_generator(sys.argv[1], sys.argv[2])" \
    "/tmp/$name/general_gan" "/tmp/$name/export/gan_general"
  tar czf "$out/${name}.tgz.part" -C "/tmp/$name/export" autoencoder_general gan_general &&
    mv "$out/${name}.tgz.part" "$out/${name}.tgz"
  echo "$name: done"; tail -1 "/tmp/$name/general_autoencoder/metrics.jsonl"; tail -1 "/tmp/$name/general_gan/metrics.jsonl"
}

for spec in "$@"; do
  train_one "${spec%%=*}" "${spec#*=}" &
done
wait
