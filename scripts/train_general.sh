#!/usr/bin/env bash
# Trains the two general models on the molecule corpus (preset `general`) and exports them in the bundled
# form (generator weights + config, no optimiser state):
#   1. the autoencoder from scratch, AE_STEPS steps;
#   2. the GAN from that autoencoder (pix2pix fine-tuning), GAN_STEPS steps;
#   3. the CWF-conditioned autoencoder from it (preset `general_cwf`, CWF_STEPS steps, default 3000; its
#      240 simulated datasets with their CWF fits are cached in ROOT/cwf_corpus, ~25 min on 2 cores once);
#   4. the same for particles whitened under coloured noise (preset `general_cwf_coloured`: three datasets in
#      four with a drawn noise spectrum, whitened; cached in ROOT/cwf_corpus_coloured; what `denoise
#      --config.noise=coloured|auto` gives autoencoder_cwf).
# usage: scripts/train_general.sh ROOT [AE_STEPS] [GAN_STEPS] [EXTRA --config.KEY=VALUE ...]
# Outputs: ROOT/general_autoencoder, ROOT/general_gan (training workdirs, resumable: rerun the same
# command after a kill) and ROOT/export/{autoencoder,gan,autoencoder_cwf}_general (copy these to
# cryojax_denoise/pretrained/).
set -euo pipefail
root=${1:?usage: scripts/train_general.sh ROOT [AE_STEPS] [GAN_STEPS] [EXTRA...]}
ae_steps=${2:-20000}
gan_steps=${3:-1000}
shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-python}
cd "$(dirname "$0")/.."

export_model() {  # export_model WORKDIR DEST
  [ -e "$2" ] || "$py" -c "import sys; from cryojax_denoise.training import restore; restore.export_generator(sys.argv[1], sys.argv[2])" "$1" "$2"
}

"$py" launch.py --experiment=train_autoencoder --workdir="$root/general_autoencoder" \
  --config.preset=general --config.steps="$ae_steps" "$@"
export_model "$root/general_autoencoder" "$root/export/autoencoder_general"
"$py" launch.py --experiment=train_gan --workdir="$root/general_gan" --config.preset=general \
  --config.init="$root/export/autoencoder_general" --config.steps="$gan_steps" "$@"
export_model "$root/general_gan" "$root/export/gan_general"
"$py" launch.py --experiment=train_autoencoder --workdir="$root/general_cwf" --config.preset=general_cwf \
  --config.init="$root/export/autoencoder_general" --config.cwf_cache="$root/cwf_corpus" \
  --config.steps="${CWF_STEPS:-3000}" "$@"
export_model "$root/general_cwf" "$root/export/autoencoder_cwf_general"
"$py" launch.py --experiment=train_autoencoder --workdir="$root/general_cwf_coloured" \
  --config.preset=general_cwf_coloured --config.init="$root/export/autoencoder_general" \
  --config.cwf_cache="$root/cwf_corpus_coloured" --config.steps="${CWF_STEPS:-3000}" "$@"
export_model "$root/general_cwf_coloured" "$root/export/autoencoder_cwf_coloured_general"
