"""The sweep figure: every method, registered or not, gets its own fixed colour and marker."""

import matplotlib

matplotlib.use("Agg")

from cryojax_denoise import denoisers  # noqa: E402
from cryojax_denoise.evaluation import report  # noqa: E402


def test_every_series_has_a_distinct_colour_and_marker_pair(tmp_path):
  methods = ["noisy", *denoisers.names(), "new_method", "another"]
  styles = report.styles_for(methods)
  colours = [c for c, _ in styles.values()]
  assert len(set(colours)) == len(methods)  # 13 series, 13 colours (the 10-colour cycle repeated blue)
  assert styles["noisy"] != styles["autoencoder_cwf"]
  assert report.styles_for(["cwf"])["cwf"] == styles["cwf"]  # fixed: the same in every figure
  rows = [dict(method=m, snr=s, mse=1.0 / (1 + i + s)) for i, m in enumerate(methods) for s in (0.1, 1.0)]
  captured = {}
  real = report._savefig

  def keep(fig, path):
    captured["lines"] = fig.axes[0].get_lines()
    real(fig, path)

  report._savefig = keep
  try:
    report.plot_metrics(rows, str(tmp_path / "metrics.png"))
  finally:
    report._savefig = real
  drawn = [matplotlib.colors.to_hex(line.get_color()) for line in captured["lines"]]
  assert len(drawn) == len(methods) and len(set(drawn)) == len(methods)
  assert (tmp_path / "metrics.png").exists()
