"""Sweep outputs: results.json/csv, the metric-vs-SNR figure, the example grid and report.md.

Everything in the report is computed from the result rows; nothing is written by hand.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryojax_denoise.io import atomic_path, atomic_write_text  # noqa: E402

FIELDS = ("method", "snr", "mse", "psnr", "ssim", "frc_resolution_A", "seconds_per_image", "n_images")
PANELS = (("mse", "MSE (relative to signal power)", True), ("psnr", "PSNR (dB)", False),
          ("ssim", "SSIM", False), ("frc_resolution_A", "FRC 0.5 resolution (Å)", False),
          ("fsc_resolution_A", "3D half-map FSC 0.143 (Å), known poses", False),
          ("fsc_resolution_refined_A", "3D half-map FSC 0.143 (Å), estimated poses", False))
# One fixed (colour, marker) per method, the same in every figure: the sweep draws 11 series and
# matplotlib's 10-colour cycle gave two of them (noisy, autoencoder_cwf) the same blue. Colours from
# tab20's dark halves plus black for the raw images; a method not listed gets the next unused pair.
STYLES = {
    "noisy": ("#000000", "x"), "gaussian": ("#1f77b4", "o"), "wiener": ("#ff7f0e", "s"),
    "tv": ("#2ca02c", "^"), "bm3d": ("#d62728", "D"), "ksvd": ("#9467bd", "v"), "ddtf": ("#8c564b", "P"),
    "cwf": ("#e377c2", "*"), "autoencoder": ("#7f7f7f", "h"), "gan": ("#bcbd22", "X"),
    "autoencoder_cwf": ("#17becf", "d"),
}
_SPARE = [("#aec7e8", "o"), ("#ffbb78", "s"), ("#98df8a", "^"), ("#ff9896", "D"), ("#c5b0d5", "v"),
          ("#c49c94", "P"), ("#f7b6d2", "*"), ("#c7c7c7", "h"), ("#dbdb8d", "X"), ("#9edae5", "d")]


def styles_for(methods) -> dict[str, tuple[str, str]]:
  """{method: (colour, marker)}, distinct for every method in `methods` (STYLES first, then spares)."""
  used = {STYLES[m] for m in methods if m in STYLES}
  spare = iter([s for s in _SPARE if s not in used] + [(f"C{i}", "o") for i in range(100)])
  return {m: STYLES[m] if m in STYLES else next(spare) for m in methods}


def ordered_values(rows, key: str) -> list:
  """The distinct values of `key` over the rows, in order of first appearance (None where absent)."""
  seen = []
  for r in rows:
    if r.get(key) not in seen:
      seen.append(r.get(key))
  return seen


def methods_of(rows) -> list[str]:
  return ordered_values(rows, "method")


def snrs_of(rows) -> list[float]:
  return sorted({r["snr"] for r in rows}, reverse=True)


def test_sets_of(rows) -> list:
  """Test-set names in order of appearance ([None] for rows without a `test_set` field)."""
  return ordered_values(rows, "test_set")


def rows_of(rows, test_set) -> list[dict]:
  return [r for r in rows if r.get("test_set") == test_set]


def write_results(rows: list[dict], workdir: str) -> None:
  """results.json (list of rows, INTERFACE schema plus extras) and results.csv (same columns)."""
  atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(rows, indent=2) + "\n")
  extra = sorted({k for r in rows for k in r} - set(FIELDS))
  buf = _io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(FIELDS) + extra)
  writer.writeheader()
  for r in rows:
    writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
  atomic_write_text(os.path.join(workdir, "results.csv"), buf.getvalue())


def _savefig(fig, path: str) -> None:
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
  plt.close(fig)


def plot_metrics(rows: list[dict], path: str) -> None:
  """MSE against SNR (log axes), one line per method, with panels for the other metrics."""
  panels = [p for p in PANELS if any(p[0] in r and r[p[0]] is not None for r in rows)]
  sets = test_sets_of(rows)
  fig, axes = plt.subplots(len(sets), len(panels), figsize=(4.2 * len(panels), 3.8 * len(sets)), squeeze=False)
  styles = styles_for(methods_of(rows))
  for i, test_set in enumerate(sets):
    subset = rows_of(rows, test_set)
    for ax, (key, label, logy) in zip(axes[i], panels):
      for m in methods_of(subset):
        pts = sorted((r["snr"], r[key]) for r in subset if r["method"] == m and r.get(key) is not None)
        if pts:
          color, marker = styles[m]
          ax.plot(*zip(*pts), marker=marker, color=color, label=m, linestyle="--" if m == "noisy" else "-")
      ax.set_xscale("log")
      if logy:
        ax.set_yscale("log")
      ax.set_xlabel("SNR")
      ax.set_title(label if test_set is None else f"{test_set}: {label}", fontsize=10)
      ax.grid(True, which="both", alpha=0.3)
    axes[i, 0].legend(fontsize=8)
  fig.tight_layout()
  _savefig(fig, path)


def plot_examples(clean: dict, noisy: dict, denoised: dict, path: str, n_cols: int = 3) -> None:
  """Grid: rows clean / noisy / each method; columns `n_cols` test images at each SNR given.

  `clean[key]`, `noisy[key]`: (N,H,W); `denoised[method][key]`: (N,H,W), where a key is an SNR or a
  label such as "ribosome70S SNR 0.1" (kept in the given order). Each column shares one contrast range
  (from its clean image) so methods compare fairly.
  """
  snrs = sorted(clean, reverse=True) if all(isinstance(k, (int, float)) for k in clean) else list(clean)
  methods = list(denoised)
  rows = ["clean", "noisy"] + methods
  cols = [(s, i) for s in snrs for i in range(min(n_cols, len(clean[s])))]
  fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.6 * len(rows)), squeeze=False)
  for j, (s, i) in enumerate(cols):
    ref = clean[s][i]
    lo, hi = np.percentile(ref, 1), np.percentile(ref, 99)
    pad = 0.25 * (hi - lo)
    for r, name in enumerate(rows):
      img = ref if name == "clean" else noisy[s][i] if name == "noisy" else denoised[name][s][i]
      ax = axes[r, j]
      ax.imshow(img, cmap="gray", vmin=lo - pad, vmax=hi + pad)
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(name, fontsize=9)
      if r == 0:
        ax.set_title(f"SNR {s:g} #{i}" if isinstance(s, (int, float)) else f"{s} #{i}", fontsize=8)
  fig.tight_layout(pad=0.2)
  _savefig(fig, path)


def _table(rows: list[dict], key: str, fmt: str) -> list[str]:
  methods, snrs = methods_of(rows), snrs_of(rows)
  lines = ["| method | " + " | ".join(f"SNR {s:g}" for s in snrs) + " |", "|---" * (len(snrs) + 1) + "|"]
  for m in methods:
    vals = []
    for s in snrs:
      r = next((r for r in rows if r["method"] == m and r["snr"] == s), None)
      v = None if r is None else r.get(key)
      vals.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt))
    lines.append(f"| {m} | " + " | ".join(vals) + " |")
  return lines


def _refined_tables(rows: list[dict], h: str) -> list[str]:
  """The estimated-pose tables (reconstruct=refine): poses found on the denoised particles, map from them."""
  lines = []
  for key, title, fmt in (("fsc_resolution_refined_A", "half-map FSC 0.143 resolution (Å)", ".1f"),
                          ("reference_resolution_refined_A", "map against the truth, FSC 0.5 resolution (Å)", ".1f"),
                          ("median_angular_error_deg", "median angular error (°)", ".2f"),
                          ("fraction_within_5deg", "fraction of particles within 5° of the true pose", ".3f")):
    lines += ["", f"{h} 3D reconstruction, estimated poses (refined on the denoised particles): {title}", ""]
    lines += _table(rows, key, fmt)
  return lines


def _sure_table(rows: list[dict]) -> list[str]:
  """'SURE ± its standard error / true' MSE per method and SNR, then where SURE failed (off by more than 10%
  + 2 standard errors, or warned)."""
  se = lambda r: f" ± {r['sure_se']:.4f}" if r.get("sure_se") is not None and r["sure_se"] == r["sure_se"] else ""  # noqa: E731
  cells = [dict(r, sure_vs_true=f"{r['sure_mse']:.4f}{se(r)} / {r['mse']:.4f}") for r in rows
           if r.get("sure_mse") is not None]
  lines = _table(cells, "sure_vs_true", "s")
  def off(r):  # beyond 10% of the true MSE plus two of SURE's standard errors (issue 32's criterion)
    se_r = r.get("sure_se")
    return abs(r["sure_mse"] - r["mse"]) > 0.1 * r["mse"] + 2 * (se_r if se_r is not None and se_r == se_r else 0.0)

  bad = [f"{r['method']} at SNR {r['snr']:g} ({r['sure_mse'] / r['mse']:.2f}× the true MSE"
         + (f"; {r['sure_warning']}" if r.get("sure_warning") else "") + ")" for r in cells
         if r.get("sure_warning") or off(r)]
  if bad:
    lines += ["", "SURE is off by more than 10% + 2 standard errors (or warned) for: " + "; ".join(bad) + "."]
  return lines


def _ratio_table(rows: list[dict], reference: str) -> list[str]:
  """Each method's MSE divided by `reference`'s at the same SNR."""
  ref = {r["snr"]: r["mse"] for r in rows if r["method"] == reference}
  ratios = [dict(r, mse_ratio=r["mse"] / ref[r["snr"]]) for r in rows if r["snr"] in ref and ref[r["snr"]] > 0]
  return _table(ratios, "mse_ratio", ".3f")


def _best(rows, snr, methods, key="mse"):
  cand = [r for r in rows if r["snr"] == snr and r["method"] in methods and r.get(key) is not None]
  return min(cand, key=lambda r: r[key]) if cand else None


def findings(rows: list[dict], classical: list[str], learned: list[str]) -> list[str]:
  """The study's questions answered from the rows (MSE unless said otherwise)."""
  out = []
  snrs = snrs_of(rows)
  hi, lo = snrs[0], snrs[-1]
  grow = []
  for m in methods_of(rows):
    a = next((r["mse"] for r in rows if r["method"] == m and r["snr"] == hi), None)
    b = next((r["mse"] for r in rows if r["method"] == m and r["snr"] == lo), None)
    if a and b:
      grow.append(f"{m} {a:.3g} → {b:.3g} (×{b / a:.1f})")
  out.append(f"- **MSE as SNR falls** from {hi:g} to {lo:g}: " + "; ".join(grow) + ".")
  for s in snrs:
    ranked = sorted((r for r in rows if r["snr"] == s), key=lambda r: r["mse"])
    out.append(f"- **Ranking at SNR {s:g}** (MSE, best first): " + " < ".join(f"{r['method']} ({r['mse']:.3g})" for r in ranked))
  present_classical = [m for m in classical if any(r["method"] == m for r in rows)]
  if present_classical:
    wins = {}
    for s in snrs:
      b = _best(rows, s, present_classical)
      if b:
        wins.setdefault(b["method"], []).append(f"{s:g}")
    out.append("- **Best classical method**: " + "; ".join(f"{m} at SNR {', '.join(v)}" for m, v in wins.items()) + ".")
  if "gan" in methods_of(rows) and "autoencoder" in methods_of(rows):
    cmp = []
    for s in snrs:
      g = next(r for r in rows if r["method"] == "gan" and r["snr"] == s)
      a = next(r for r in rows if r["method"] == "autoencoder" and r["snr"] == s)
      cmp.append(f"SNR {s:g}: {'GAN' if g['mse'] < a['mse'] else 'autoencoder'} "
                 f"({g['mse']:.3g} vs {a['mse']:.3g}; SSIM {g['ssim']:.3f} vs {a['ssim']:.3f})")
    out.append("- **GAN vs autoencoder** (MSE): " + "; ".join(cmp) + ".")
  present_learned = [m for m in learned if any(r["method"] == m for r in rows)]
  if present_classical and present_learned:
    cmp = []
    for s in snrs:
      bl, bc = _best(rows, s, present_learned), _best(rows, s, present_classical)
      verdict = "learned wins" if bl["mse"] < bc["mse"] else "classical wins"
      cmp.append(f"SNR {s:g}: {verdict} ({bl['method']} {bl['mse']:.3g} vs {bc['method']} {bc['mse']:.3g})")
    out.append("- **Learned vs classical**: " + "; ".join(cmp) + ".")
  if any(r.get("fsc_resolution_A") is not None for r in rows):
    for s in snrs:
      cand = [r for r in rows if r["snr"] == s and r.get("fsc_resolution_A") is not None]
      best = min(cand, key=lambda r: r["fsc_resolution_A"])
      noisy = next((r for r in cand if r["method"] == "noisy"), None)
      ref = f" (raw particles: {noisy['fsc_resolution_A']:.1f} Å)" if noisy else ""
      out.append(f"- **3D reconstruction at SNR {s:g}** (known poses): best half-map resolution "
                 f"{best['fsc_resolution_A']:.1f} Å from {best['method']}{ref}.")
  if any(r.get("fsc_resolution_refined_A") is not None for r in rows):
    for s in snrs:
      cand = [r for r in rows if r["snr"] == s and r.get("fsc_resolution_refined_A") is not None]
      best = min(cand, key=lambda r: r.get("reference_resolution_refined_A", r["fsc_resolution_refined_A"]))
      noisy = next((r for r in cand if r["method"] == "noisy"), None)
      ref = (f" (raw particles: {noisy['reference_resolution_refined_A']:.1f} Å, median angular error "
             f"{noisy['median_angular_error_deg']:.1f}°)") if noisy else ""
      out.append(f"- **3D reconstruction at SNR {s:g}** (estimated poses): best map against the truth "
                 f"{best['reference_resolution_refined_A']:.1f} Å from {best['method']} (median angular error "
                 f"{best['median_angular_error_deg']:.1f}°){ref}.")
  return out


def write_report(rows: list[dict], workdir: str, *, config_json: str, device: str, command: str,
                 elapsed_s: float, classical: list[str], learned: list[str], chosen: dict, notes: list[str]) -> None:
  """report.md: tables, rankings, findings, tuned parameters, timings, device, config, how to reproduce."""
  lines = ["# SNR sweep report", "",
           f"Generated by `{command}` in {elapsed_s / 60:.1f} min on {device}.", "",
           "![metrics vs SNR](mse_vs_snr.png)", "", "![examples](examples.png)", ""]
  for test_set in test_sets_of(rows):
    subset = rows_of(rows, test_set)
    h = "##" if test_set is None else "###"
    if test_set is not None:
      lines += [f"## Test set: {test_set}", ""]
    lines += [f"{h} MSE (relative to signal power; lower is better)", ""] + _table(subset, "mse", ".4f")
    if any(r["method"] == "bm3d" for r in subset):
      lines += ["", f"{h} MSE relative to BM3D's (< 1: better than BM3D)", ""] + _ratio_table(subset, "bm3d")
    lines += ["", f"{h} PSNR (dB)", ""] + _table(subset, "psnr", ".2f")
    lines += ["", f"{h} SSIM", ""] + _table(subset, "ssim", ".3f")
    lines += ["", f"{h} FRC 0.5 resolution against the clean image (Å)", ""] + _table(subset, "frc_resolution_A", ".1f")
    if any(r.get("fsc_resolution_A") is not None for r in subset):
      lines += ["", f"{h} 3D reconstruction, known poses: half-map FSC 0.143 resolution (Å)", ""]
      lines += _table(subset, "fsc_resolution_A", ".1f")
    if any(r.get("fsc_resolution_refined_A") is not None for r in subset):
      lines += _refined_tables(subset, h)
    if any(r.get("output_gain") is not None for r in subset):
      lines += ["", f"{h} Output gain α (SURE's MSE-optimal scale of each output, from noisy fitting particles; "
                "the MSE above is of α × the method's output)", ""] + _table(subset, "output_gain", ".3f")
    if any(r.get("sure_mse") is not None for r in subset):
      lines += ["", f"{h} SURE's estimate of the MSE (noisy images alone) ± its standard error / true MSE", ""]
      lines += _sure_table(subset)
    lines += ["", f"{h} Seconds per image", ""] + _table(subset, "seconds_per_image", ".4f")
    lines += ["", f"{h} Findings", ""] + findings(subset, classical, learned) + [""]
  if chosen:
    lines += ["", "## Parameters chosen on the tuning batch", "", "| method | SNR | chosen |", "|---|---|---|"]
    for (m, s), p in sorted(chosen.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
      lines.append(f"| {m} | {s:g} | {json.dumps(p)} |")
  if notes:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  lines += ["", "## Config", "", "```json", config_json.strip(), "```", "",
            "## Reproduce", "", f"    {command}", ""]
  atomic_write_text(os.path.join(workdir, "report.md"), "\n".join(lines))
