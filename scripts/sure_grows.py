"""Would `sure_tune` grow its tuning subset in a validation setting? (issue 13: which of the rows validated
before the subset could grow still stand.)

usage: python scripts/sure_grows.py METHOD SET:CTF:SNR [SET:CTF:SNR ...]
  e.g. ... bm3d phantom:1:1.0 ribosome:0:0.05
Runs the grid on the first 32 images of `validate_sure.py`'s stack for each setting, as `sure_tune` does, with
no growth and no estimate, and prints one JSON line: the smallest `z_above_best` of the other grid values
("grows" when under `sure_policy.SIGNIFICANCE`) and the grid's SURE and true MSE. A setting that does not grow
gives the same choice and estimate as with a fixed 32-image subset (same images, probes and code path).
"""
import json
import sys

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure_policy


def main():
  method = sys.argv[1]
  knob = denoisers.REGISTRY[method].knob
  for arg in sys.argv[2:]:
    name, ctf, snr = arg.split(":")
    ds = validate_sure.simulate_setting(validate_sure.load_set(name), float(snr), bool(int(ctf)),
                                        validate_sure.n_simulated(sure_policy.N_IMAGES, sure_policy.N_ESTIMATE))
    _, table = sure_policy.sure_tune(method, ds.noisy, None, n_images=sure_policy.N_IMAGES,
                                     n_tune_max=sure_policy.N_IMAGES, n_estimate=0, clean=ds.clean,
                                     stack_size=validate_sure.EMULATED)
    z = sorted(r["z_above_best"] for r in table)[1]
    print(json.dumps({"method": method, "set": name, "ctf": bool(int(ctf)), "snr": float(snr), "min_z_other": z,
                      "grows": bool(z < sure_policy.SIGNIFICANCE),
                      "table": [{k: r[k] for k in (knob, "sure_mse", "mse", "z_above_best")} for r in table]}),
          flush=True)


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
