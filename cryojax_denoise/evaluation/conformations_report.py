"""Outputs of the `conformations` experiment: results.json/csv, the accuracy figure, report.md.

Everything in the report is computed from the result rows. A method "beats raw" in a cell
(classifier, displacement, SNR) when its accuracy exceeds `raw_accuracy` (raw particles, same
classifier, same images) by more than two binomial standard errors,
2·sqrt(p_m(1 - p_m)/n + p_r(1 - p_r)/n) (an independent-samples bound; the two share their
particles, so it is conservative); "loses" symmetrically.
"""

from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryojax_denoise.evaluation.report import _savefig, methods_of  # noqa: E402
from cryojax_denoise.io import atomic_write_text  # noqa: E402

FIELDS = ("method", "snr", "displacement_A", "classifier", "accuracy", "n_images")
CLASSIFIER_TITLES = {"template": "pose-known template matching (least squares)",
                     "template_ncc": "pose-known template matching (correlation coefficient)",
                     "pca_gmm": "PCA + Gaussian mixture (narrow poses, up to relabelling)",
                     "pca_kmeans": "PCA + k-means (narrow poses, up to relabelling)",
                     "3d": "3D class maps from raw particles (template-matching classes)"}


def write_results(rows: list[dict], workdir: str) -> None:
  """results.json (list of rows) and results.csv (the FIELDS first, then any extra columns)."""
  import pandas as pd

  atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(rows, indent=2) + "\n")
  frame = pd.DataFrame(rows)
  frame = frame[[c for c in FIELDS if c in frame] + [c for c in frame if c not in FIELDS]]
  atomic_write_text(os.path.join(workdir, "results.csv"), frame.to_csv(index=False))


def _displacements(rows) -> list:
  from cryojax_denoise.evaluation.report import ordered_values

  return ordered_values(rows, "displacement_A")


def _label(d, rows) -> str:
  if d is None:
    return "user states"
  angle = next((r["angle_deg"] for r in rows if r.get("displacement_A") == d and "angle_deg" in r), None)
  return f"{angle:g}° hinge (RMS {d:.1f} Å)" if angle is not None else f"{d:g} Å"


def plot_accuracy(rows: list[dict], path: str) -> None:
  """Accuracy against SNR (log x), one panel per (classifier, displacement), one line per method;
  the 3D row shows the correlation of the class-map difference with the true difference."""
  classifiers = [c for c in CLASSIFIER_TITLES if any(r["classifier"] == c for r in rows)]
  disps, methods = _displacements(rows), methods_of(rows)
  fig, axes = plt.subplots(len(classifiers), len(disps), figsize=(3.2 * len(disps), 2.6 * len(classifiers)),
                           squeeze=False, sharex=True)
  colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
  for i, c in enumerate(classifiers):
    key = "difference_correlation" if c == "3d" else "accuracy"
    for j, d in enumerate(disps):
      ax = axes[i, j]
      for m in methods:
        pts = sorted((r["snr"], r[key]) for r in rows if r["classifier"] == c and r["method"] == m
                     and r.get("displacement_A") == d and r.get(key) is not None)
        if pts:
          ax.plot(*zip(*pts), "o-" if m == "raw" else ".-", color=colors[m], lw=2.2 if m == "raw" else 1.1,
                  ms=4, label=m)
      if key == "accuracy":
        ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.set_ylim(0.4, 1.02)
      ax.set_xscale("log")
      ax.set_title(f"{c}, {_label(d, rows)}", fontsize=9)
      if j == 0:
        ax.set_ylabel("diff.-map corr." if c == "3d" else "accuracy")
      if i == len(classifiers) - 1:
        ax.set_xlabel("SNR")
  axes[0, -1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  _savefig(fig, path)


def _se(p: float, n: int) -> float:
  return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def compare(rows: list[dict], classifier: str) -> tuple[list[tuple], list[tuple], int]:
  """(cells where a method beats raw, cells where it loses, cells compared); each cell is
  (method, displacement, snr, accuracy, raw accuracy)."""
  wins, losses, total = [], [], 0
  for r in rows:
    if r["classifier"] != classifier or r.get("raw_accuracy") is None:
      continue
    total += 1
    ref, n = r["raw_accuracy"], r["n_images"]
    margin = 2 * math.hypot(_se(r["accuracy"], n), _se(ref, n))
    cell = (r["method"], r.get("displacement_A"), r["snr"], r["accuracy"], ref)
    if r["accuracy"] - ref > margin:
      wins.append(cell)
    elif ref - r["accuracy"] > margin:
      losses.append(cell)
  return wins, losses, total


def verdict(rows: list[dict]) -> list[str]:
  """One plain sentence per classifier: does any denoiser beat raw particles, and where."""
  lines = []
  for c in ("template", "template_ncc", "pca_gmm", "pca_kmeans"):
    wins, losses, total = compare(rows, c)
    if not total:
      continue
    fmt = lambda cells: "; ".join(f"{m} at {_label(d, rows)}, SNR {s:g} ({a:.2f} vs {b:.2f})"
                                  for m, d, s, a, b in cells[:12]) + (" …" if len(cells) > 12 else "")
    head = f"- **{c}**: "
    if wins:
      head += f"a denoiser beats raw particles in {len(wins)} of {total} cells: {fmt(wins)}."
    else:
      head += f"no denoiser beats raw particles (same images) in any of {total} cells (by > 2 standard errors)."
    head += f" Worse than raw in {len(losses)} cells." if losses else " None is worse than raw either."
    lines.append(head)
  cells = [(r["difference_correlation"], r["raw_difference_correlation"]) for r in rows
           if r["classifier"] == "3d" and r.get("raw_difference_correlation") is not None]
  if cells:
    better = sum(a > b + 0.02 for a, b in cells)
    worse = sum(a < b - 0.02 for a, b in cells)
    lines.append(f"- **3d**: the class-map difference correlates better with the true difference (by > 0.02) "
                 f"than with raw-particle classes in {better} of {len(cells)} cells, worse in {worse}.")
  return lines


def table(rows: list[dict], classifier: str, key: str = "accuracy", fmt: str = "{:.3f}") -> list[str]:
  """Markdown table: a row per (displacement, method), a column per SNR; '—' where not run."""
  sel = [r for r in rows if r["classifier"] == classifier]
  snrs = sorted({r["snr"] for r in sel}, reverse=True)
  out = ["| displacement | method | " + " | ".join(f"SNR {s:g}" for s in snrs) + " | n |",
         "|---|---|" + "---|" * (len(snrs) + 1)]
  for d in _displacements(sel):
    for m in methods_of(sel):
      cells = {r["snr"]: r for r in sel if r["method"] == m and r.get("displacement_A") == d}
      if not cells:
        continue
      vals = [fmt.format(cells[s][key]) if s in cells and cells[s].get(key) is not None else "—" for s in snrs]
      n = max(c["n_images"] for c in cells.values())
      out.append(f"| {_label(d, sel)} | {m} | " + " | ".join(vals) + f" | {n} |")
  return out


def done_checks(rows: list[dict]) -> list[str]:
  """The issue's acceptance numbers, measured: raw template matching at the highest SNR and largest
  displacement, and at the lowest SNR and smallest displacement."""
  raw = [r for r in rows if r["method"] == "raw" and r["classifier"] == "template" and r.get("displacement_A") is not None]
  if not raw:
    return []
  dmax, dmin = max(r["displacement_A"] for r in raw), min(r["displacement_A"] for r in raw)
  hi = max((r for r in raw if r["displacement_A"] == dmax), key=lambda r: r["snr"])
  lo = min((r for r in raw if r["displacement_A"] == dmin), key=lambda r: r["snr"])
  return [f"- Raw template matching at SNR {hi['snr']:g}, {_label(dmax, rows)}: accuracy {hi['accuracy']:.3f} "
          f"(n = {hi['n_images']}).",
          f"- Raw template matching at SNR {lo['snr']:g}, {_label(dmin, rows)}: accuracy {lo['accuracy']:.3f} "
          f"(n = {lo['n_images']}; chance 0.5, binomial s.e. {_se(0.5, lo['n_images']):.3f})."]


def write_report(rows: list[dict], workdir: str, *, notes: list[str], config_json: str, device: str, command: str,
                 elapsed_s: float) -> None:
  lines = ["# conformations: do raw or denoised particles tell states apart?", "",
           f"Command: `{command}`  ", f"Device: {device}; wall time {elapsed_s / 60:.1f} min.", "",
           "## Verdict", "", *verdict(rows), "", "## Acceptance numbers", "", *done_checks(rows), "",
           "![accuracy vs SNR](accuracy_vs_snr.png)", ""]
  for c, title in CLASSIFIER_TITLES.items():
    if any(r["classifier"] == c for r in rows):
      lines += [f"## {c}: {title}", ""]
      if c == "3d":
        lines += ["Correlation of the class-map difference (map 0 − map 1) with the true difference:", "",
                  *table(rows, c, "difference_correlation", "{:.2f}"), "",
                  "Mean FSC (shells 1..Nyquist) of the class maps against their true states:", "",
                  *table(rows, c, "fsc_mean", "{:.3f}"), ""]
      else:
        lines += table(rows, c) + [""]
  timing = {}
  for r in rows:
    if r["classifier"] == "template" and r["method"] != "raw":
      timing.setdefault(r["method"], []).append(r["seconds_per_image"])
  if timing:
    lines += ["## Denoising time", "", "| method | s/image (mean) |", "|---|---|",
              *(f"| {m} | {np.mean(v):.4f} |" for m, v in timing.items()), ""]
  lines += ["## Notes", "", *(f"- {n}" for n in notes), "",
            "Classical methods run at their registry defaults with the true noise σ; accuracy of unsupervised "
            "classifiers is maximised over relabellings of the clusters (chance is slightly above 0.5).", "",
            "## Config", "", "```json", config_json.strip(), "```", ""]
  atomic_write_text(os.path.join(workdir, "report.md"), "\n".join(lines))
