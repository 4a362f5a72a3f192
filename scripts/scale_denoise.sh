#!/usr/bin/env bash
# 1 vs 2 local processes: `denoise` of an N-particle STAR of 64² random images (METHOD, default wiener);
# prints wall seconds of each, their img/s progress lines, and whether the two outputs are identical.
# usage: N=20000 scripts/scale_denoise.sh [WORKDIR]      (WORKDIR default runs/scale_denoise)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
D=$(mkdir -p "${1:-runs/scale_denoise}" && cd "${1:-runs/scale_denoise}" && pwd)
rm -rf "$D/data" "$D/one" "$D/two"; mkdir -p "$D/data"
"$py" - "$D/data" "${N:-2000}" <<'PY'
import sys
import numpy as np, pandas as pd
from cryojax_denoise import io
d, n = sys.argv[1], int(sys.argv[2])
io.write_stack(f"{d}/p.mrcs", np.random.default_rng(0).normal(size=(n, 64, 64)).astype(np.float32), 2.0)
parts = pd.DataFrame({"rlnImageName": [f"{i}@p.mrcs" for i in range(1, n + 1)], "rlnOpticsGroup": [1] * n})
optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnVoltage": [300.0]})
io.write_star(f"{d}/p.star", optics, parts)
PY
run() { "$py" launch.py --experiment=denoise --config.method="${METHOD:-wiener}" --config.sure_images=0 \
  --config.batch_size=256 --config.input="$D/data/p.star" "$@"; }
t0=$(date +%s.%N)
run --config.output="$D/one/den.star" --workdir="$D/one" 2> "$D/one.log"
t1=$(date +%s.%N)
port=$("$py" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
keys=(--config.distributed=True --config.coordinator_address=127.0.0.1:$port --config.num_processes=2)
run --config.output="$D/two/den.star" --workdir="$D/two" "${keys[@]}" --config.process_id=0 2> "$D/two0.log" &
run --config.output="$D/two/den.star" --workdir="$D/two" "${keys[@]}" --config.process_id=1 2> "$D/two1.log"
wait
t2=$(date +%s.%N)
"$py" - "$t0" "$t1" "$t2" "$D" <<'PY'
import sys
import numpy as np
from cryojax_denoise import io
t0, t1, t2 = (float(t) for t in sys.argv[1:4])
d = sys.argv[4]
print(f"one process: {t1 - t0:.1f} s wall; two processes: {t2 - t1:.1f} s wall")
a, b = (np.asarray(io.read_stack(f"{d}/{k}/den.mrcs").data) for k in ("one", "two"))
print("identical:", np.array_equal(a, b))
PY
# a process may log no progress line (process 1 on a small N did not): that is not a failure
for log in one two0 two1; do grep -h "img/s" "$D/$log.log" | tail -1 || true; done
