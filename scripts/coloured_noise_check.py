"""Issue 29's table: every registered method under coloured noise, as `denoise` runs it, against white noise.

    PYTHONPATH=. python scripts/coloured_noise_check.py OUT.jsonl [--snrs 0.1,0.05,0.02]
        [--spectra issue:relion31,issue:reprojection48] [--methods all] [--variants est,true,white_noise]
        [--n 1000] [--n_score 64] [--n_slow 16] [--ctf 1] [--sure issue:relion31/est,white_noise]
        [--gain SPECTRUM/est,...] [--n_gain 128] [--n_gain_slow 32] [--reuse DONE.jsonl ...] [--no_auto]
    PYTHONPATH=. python scripts/coloured_noise_check.py --table OUT.jsonl [MORE.jsonl ...] [--physics]

Unseen ribosome (../shared/data/ribosome70S_65.mrc, 5 Å/px, 64², CTF unless `--ctf 0`), `--n` particles
(seed 20,000); noise of each spectrum (`noise.spec.resolve`) at the same total variance as white noise of
the SNR, from the same unit draws (`simulate_dataset(noise_psd=)`). Each method as `denoise` runs it
(`run`, mirroring `pipeline.run`): dataset-level methods (cwf, autoencoder_cwf) fitted on all `--n`
particles with their CTFs (`noise.methods.fit_coloured`: whitened, the filter joined to each CTF) and
held fixed; knob methods with `params=auto` (`sure_policy.sure_tune` under the spectrum, scoring the
whitened denoiser `noise.methods.wrap`), except bm3d and ksvd at their registered defaults (`sigma_scale=1`, which
`KEEP_DEFAULT` keeps in every validated setting; `C=1.15`): tuning them costs 25 calls per image, over an
hour on the shared CPU; learned models whitened (colour ∘ model ∘ whiten). σ is never given (estimated, as
`denoise` does). Variants: `est` (the spectrum
estimated on the noisy stack, `noise.decide.choose('coloured')`: denoise --config.noise=coloured),
`true` (the true spectrum given: --config.noise_psd=FILE), `white_noise` (the same particles with white
noise, the white model: --config.noise=white), `white_model` (the coloured stack denoised as if its noise
were white: --config.noise=white on it). Scored on the first `--n_score` particles (`--n_slow` for
bm3d and ksvd). MSE relative to the scored clean images' power (1.0 = a blank image); with `--sure`
variants, also SURE's estimate of the same images' MSE (absolute units, its standard error): `quality`'s
`method_sure` or `sure_tune`'s estimate of the chosen knob, the number `denoise` logs. One JSON line per
(SNR, spectrum, method, variant) appended to OUT.jsonl; `--table` prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DATA = "../shared/data"
ALL = ("gaussian", "wiener", "bm3d", "ksvd", "ddtf", "tv", "cwf", "autoencoder", "gan", "autoencoder_cwf")
SLOW = ("bm3d", "ksvd")
NO_AUTO = ("bm3d", "ksvd")  # registered defaults (see the docstring)


def simulate(snr: float, spectrum: str | None, n: int, ctf: bool = True, seed: int = 20_000):
  """(dataset, CTFs (n, 64, 64) or None, true PSD grid (64, 64) in image units or None)."""
  from cryojax_denoise.data import ctf as ctf_mod
  from cryojax_denoise.data import simulate as sim
  from cryojax_denoise.data.maps import load_source
  from cryojax_denoise.noise import spec
  from cryojax_denoise.noise import whiten as wh

  src = load_source(volume=f"{DATA}/ribosome70S_65.mrc", pixel_size=5.0, image_size=64, seed=0)
  radial = spec.resolve(spectrum) if spectrum else None
  ds = sim.simulate_dataset(src, n, 64, snr, seed=seed, ctf=ctf, noise_psd=radial)
  c = ctf_mod.ctf_grid(ds.particles, ds.optics, 64, float(ds.pixel_size)) if ctf else None
  true = None
  if radial is not None:
    g = wh.psd_grid(radial, (64, 64))
    true = g * float(ds.noise_std) ** 2 / g.mean()
  return ds, c, true


def estimated_psd(noisy):
  """The spectrum `denoise --config.noise=coloured` whitens with: (H, W) in image units."""
  from cryojax_denoise.noise import decide

  model, _ = decide.choose("coloured", noisy, None)
  return next(iter(model[1].values()))


def run(name: str, noisy, ctf, psd, score: slice, clean, auto: bool = True, want_sure: bool = False,
        params: dict | None = None, gain: int = 0) -> dict:
  """`name` as `denoise` applies it to `noisy` (fit on all of it) under noise of spectrum `psd` (None:
  white); scored on `noisy[score]`: {"mse", "params", "sure", "sure_se", "sure_true" (the true MSE of the
  outputs SURE scored), "seconds"} in image units. `params` given: those, no tuning. `gain` > 0: also the
  output scaled by SURE's MSE-optimal gain α = (⟨f, y⟩ − tr(Σ J_f)) / ‖f‖² in [0, 1], estimated as `denoise
  --config.output_gain` does (`sure_policy.gained_method`) on the `gain` particles after the scored ones
  ("gain", "gain_images", "mse_gain"; α = 0 is a blank image, so its MSE stays near or below 1.0)."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers.tuning import sure_policy
  from cryojax_denoise.noise.methods import fit_coloured
  from cryojax_denoise.noise.methods import wrap

  t0 = time.time()
  m = denoisers.REGISTRY[name]
  y, x = noisy[score], clean[score]
  c = None if ctf is None else ctf[score]
  out = {"params": {}}
  est = None
  if m.fit is not None:
    den = fit_coloured(name, noisy, None, ctf, psd)
    apply = lambda im: den(im, None, c)  # noqa: E731
    if want_sure:
      est = sure_policy.method_sure(name, den, y, None, ctf=c, noise_psd=psd, fitted=True)
  elif m.knob and auto and name not in NO_AUTO and params is None:
    knob = m.knob
    w = None if psd is None else (lambda d, v: wrap(d, psd, name, {knob: v}))
    params, rows = sure_policy.sure_tune(name, y, None, noise_psd=psd, wrap=w, stack_size=len(noisy), clean=x)
    best = next(r for r in rows if r[knob] == params[knob])
    out["params"] = params
    out["sure_images"] = best["estimate"]["n_images"]
    out["sure"], out["sure_se"] = best["estimate"]["sure_mse"], best["estimate"]["sure_se"]
    out["sure_true"] = best["estimate"]["mse"]
    den = wrap(denoisers.get(name, **params), psd, name, params)
    apply = lambda im: den(im, None)  # noqa: E731
  else:
    out["params"] = dict(params or {})
    den = wrap(denoisers.get(name, **out["params"]), psd, name, out["params"])
    apply = lambda im: den(im, None)  # noqa: E731
    if want_sure:
      est = sure_policy.method_sure(name, den, y, None, noise_psd=psd, **out["params"])
  res = np.asarray(apply(y), np.float32)
  out["mse"] = float(np.mean((res - x) ** 2))
  if gain:  # α as `denoise --config.output_gain` finds it: SURE of the applied method on other particles
    held = slice(score.stop, score.stop + int(gain))
    out_g = sure_policy.gained_method(name, den, noisy[held], None, ctf=None if ctf is None else ctf[held],
                                      noise_psd=psd, fitted=m.fit is not None, **out["params"])
    if not isinstance(out_g, str):
      alpha = out_g[1]
      out["gain"], out["gain_images"] = alpha, len(noisy[held])
      out["mse_gain"] = float(np.mean((alpha * res - x) ** 2))
  if isinstance(est, str):
    out["sure_reason"] = est
  elif est is not None:
    out["sure"], out["sure_se"], out["sure_true"] = est.mean, est.standard_error, out["mse"]
    out["sure_images"] = len(est.mse)
  out["seconds"] = round(time.time() - t0, 1)
  return out


def measure(args) -> None:
  methods = ALL if args.methods == "all" else tuple(args.methods.split(","))
  variants = args.variants.split(",")
  sure_for = set(filter(None, args.sure.split(",")))  # "white_noise" or SPECTRUM/VARIANT
  gain_for = set(filter(None, args.gain.split(",")))
  done = {(r["snr"], r["spectrum"], r["method"], r["variant"], r["ctf"], r["n"]): r for r in load(args.reuse)}
  ctf_on = bool(args.ctf)
  for snr in (float(s) for s in args.snrs.split(",")):
    sets = {}
    if "white_noise" in variants:
      sets["white"] = simulate(snr, None, args.n, ctf_on)
    for spectrum in filter(None, args.spectra.split(",")):
      if {"est", "true", "white_model"} & set(variants):
        sets[spectrum] = simulate(snr, spectrum, args.n, ctf_on)
    for name in methods:
      n_score = args.n_slow if name in SLOW else args.n_score
      score = slice(0, n_score)
      for key, (ds, ctf, true) in sets.items():
        tuned = None  # `true` takes `est`'s params: the two differ by the spectrum alone
        for variant in (["white_noise"] if key == "white" else
                        [v for v in variants if v in ("est", "true", "white_model")]):
          psd = (None if key == "white" or variant == "white_model" else
                 true if variant == "true" else estimated_psd(ds.noisy))
          tag = "white_noise" if key == "white" else f"{key}/{variant}"
          old = done.get((snr, None if key == "white" else key, name, variant, ctf_on, n_score))
          if old is not None and (tag not in sure_for or "sure" in old):  # measured already (--reuse)
            tuned = old["params"] if variant == "est" else tuned
            continue
          r = run(name, ds.noisy, ctf, psd, score, ds.clean, auto=not args.no_auto, want_sure=tag in sure_for,
                  params=tuned if variant == "true" else None,
                  gain=(args.n_gain_slow if name in SLOW else args.n_gain) if tag in gain_for else 0)
          tuned = r["params"] if variant == "est" else tuned
          power = float(np.mean(np.square(ds.clean[score].astype(np.float64))))
          row = {"snr": snr, "spectrum": None if key == "white" else key, "method": name, "variant": variant,
                 "ctf": ctf_on, "n_fit": args.n, "n": n_score, "power": power, "mse_rel": r.pop("mse") / power,
                 "noise_var": float(ds.noise_std) ** 2, **r}
          row["mse_rel"] = round(row["mse_rel"], 5)
          if "mse_gain" in row:
            row["mse_gain_rel"] = round(row.pop("mse_gain") / power, 5)
          with open(args.out, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
          print(json.dumps(row, default=float), flush=True)
  from cryojax_denoise.denoisers.classical import bm3d as bm3d_mod
  bm3d_mod.shutdown_pool()


def physics(spectra, snrs, n: int = 1000) -> dict:
  """What the noise's placement costs by itself: the clean stack's mean power spectrum S(k) (CTF, `--n`
  particles) against each spectrum's shape g(k) (mean 1): the signal-weighted noise Σ S g / Σ S (the factor by
  which the noise where the signal lives exceeds white noise of the same total variance; its inverse is the
  effective SNR factor), and the MSE of the stationary Fourier-Wiener oracle S / (S + N) at each SNR, coloured
  / white. Printed; {spectrum: factor}."""
  from cryojax_denoise.noise import spec
  from cryojax_denoise.noise import whiten as wh

  ds, _, _ = simulate(1.0, None, n)
  S = np.mean(np.abs(np.fft.fft2(ds.clean.astype(np.float64))) ** 2, axis=0) / ds.clean[0].size
  power = S.mean()
  factors = {}
  for name in spectra:
    g = wh.psd_grid(spec.resolve(name), S.shape)
    g /= g.mean()
    factors[name] = float(np.sum(S * g) / np.sum(S))
    cells = []
    for snr in snrs:
      n2 = power / snr
      white, col = (float(np.mean(S * n2 * gg / (S + n2 * gg)) / power) for gg in (1.0, g))
      cells.append(f"SNR {snr:g}: {white:.3f} / {col:.3f} = {col / white:.2f}x")
    print(f"{name}: signal-weighted noise {factors[name]:.3f}x white (effective SNR factor {1 / factors[name]:.3f}); "
          "Fourier-Wiener oracle MSE white / coloured: " + "; ".join(cells))
  return factors


def effective(rows, factors) -> None:
  """Each method's MSE under a spectrum (estimated) against its own white-noise MSE at the effective SNR
  (SNR / the spectrum's signal-weighted noise factor, `physics`), interpolated linearly in log SNR between the
  measured white-noise SNRs: near 1 when the method loses what the noise's placement costs and no more (its
  input, whitened, is as good to it as white noise of that SNR)."""
  white = {}
  for r in rows:
    if r["variant"] == "white_noise" and r.get("ctf", True):
      white.setdefault(r["method"], {})[r["snr"]] = r["mse_rel"]
  print("\n| spectrum | SNR | effective SNR | method | coloured (est) | white noise at the effective SNR | ratio |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    w = white.get(r["method"], {})
    if r["variant"] != "est" or r["spectrum"] not in factors or len(w) < 2:
      continue
    eff = r["snr"] / factors[r["spectrum"]]
    snrs = sorted(w)
    if not snrs[0] <= eff <= snrs[-1]:
      continue
    at = float(np.interp(np.log(eff), np.log(snrs), [w[x] for x in snrs]))
    print(f"| {r['spectrum']} | {r['snr']:g} | {eff:.3f} | {r['method']} | {r['mse_rel']:.3f} | {at:.3f} | "
          f"{r['mse_rel'] / at:.3f} |")


def load(paths) -> list[dict]:
  rows = []
  for p in paths:
    if not os.path.exists(p):
      continue
    with open(p) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows


def table(paths) -> None:
  """Issue 29's table from JSONL rows (the last row of each cell counts)."""
  cell = {}
  for r in load(paths):
    cell[(r["snr"], r["spectrum"] or "white", r["method"], r["variant"], r.get("ctf", True))] = r
  spectra = sorted({k[1] for k in cell if k[1] != "white"})
  for spectrum in spectra:
    print(f"\n{spectrum}: MSE relative to the signal power (est / true; / white noise)\n")
    wm_col = any(k[1] == spectrum and k[3] == "white_model" for k in cell)  # the column only where measured
    print("| SNR | method | params (est) | n | estimated spectrum | true spectrum | white noise | est / true "
          "| est / white |" + (" white model |" if wm_col else "") + " est × SURE's gain (α) |")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if wm_col else ""))
    for snr in sorted({k[0] for k in cell}, reverse=True):
      for name in ALL:
        e, t = cell.get((snr, spectrum, name, "est", True)), cell.get((snr, spectrum, name, "true", True))
        w = cell.get((snr, "white", name, "white_noise", True))
        if not (e or t):
          continue
        f = lambda r: "" if r is None else f"{r['mse_rel']:.3f}"  # noqa: E731
        flag = lambda r: "**" if r is not None and r["mse_rel"] > 1.0 else ""  # noqa: E731
        ratio = lambda a, b: "" if a is None or b is None else f"{a['mse_rel'] / b['mse_rel']:.3f}"  # noqa: E731
        params = "" if e is None else ",".join(f"{k}={v:g}" for k, v in e.get("params", {}).items())
        wm = cell.get((snr, spectrum, name, "white_model", True))
        g = "" if e is None or "mse_gain_rel" not in e else f"{e['mse_gain_rel']:.3f} ({e['gain']:.2f})"
        print(f"| {snr:g} | {name} | {params} | {(e or t)['n']} | {flag(e)}{f(e)}{flag(e)} | {flag(t)}{f(t)}{flag(t)} "
              f"| {f(w)} | {ratio(e, t)} | {ratio(e, w)} |" + (f" {flag(wm)}{f(wm)}{flag(wm)} |" if wm_col else "")
              + f" {g} |")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out", nargs="?", default="")
  ap.add_argument("--table", nargs="+", default=None)
  ap.add_argument("--snrs", default="0.1,0.05,0.02")
  ap.add_argument("--spectra", default="issue:relion31,issue:reprojection48")
  ap.add_argument("--methods", default="all")
  ap.add_argument("--variants", default="est,true,white_noise")
  ap.add_argument("--sure", default="issue:relion31/est,white_noise",
                  help="variants that also get SURE's estimate: white_noise, SPECTRUM/est, SPECTRUM/true")
  ap.add_argument("--n", type=int, default=1000)
  ap.add_argument("--n_score", type=int, default=64)
  ap.add_argument("--n_slow", type=int, default=16)
  ap.add_argument("--ctf", type=int, default=1)
  ap.add_argument("--reuse", nargs="*", default=[], help="JSONL files whose cells are not measured again")
  ap.add_argument("--gain", default="", help="variants (as --sure) that also get SURE's output gain (see `run`)")
  ap.add_argument("--n_gain", type=int, default=128, help="particles α is estimated on (after the scored ones)")
  ap.add_argument("--n_gain_slow", type=int, default=32, help="the same for bm3d and ksvd")
  ap.add_argument("--physics", action="store_true", help="with --table: what the spectra cost an oracle (`physics`)")
  ap.add_argument("--no_auto", action="store_true", help="registered defaults instead of params=auto")
  args = ap.parse_args()
  if args.table:
    table(args.table)
    if args.physics:
      factors = physics([s for s in args.spectra.split(",") if s], [1, 0.5, 0.2, 0.1, 0.05, 0.02], args.n)
      effective(load(args.table), factors)
    return
  if not args.out:
    sys.exit("usage: coloured_noise_check.py OUT.jsonl [options] | --table OUT.jsonl")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  measure(args)


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
