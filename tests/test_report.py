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


def test_sure_table_allows_two_standard_errors_and_gain_table(tmp_path):
  """report.md's SURE table flags a cell only beyond 10% + 2 standard errors of the true MSE (issue 32's
  criterion), and a set run with the output gain gets its α table."""
  from cryojax_denoise.evaluation import report

  base = dict(snr=0.1, test_set="coloured", psnr=1.0, ssim=0.1, frc_resolution_A=20.0, seconds_per_image=0.01)
  rows = [dict(base, method="noisy", mse=10.0),
          dict(base, method="cwf", mse=0.50, sure_mse=0.62, sure_se=0.02, output_gain=1.0),  # 0.12 > 0.05 + 0.04
          dict(base, method="gan", mse=0.50, sure_mse=0.62, sure_se=0.05, output_gain=0.42)]  # 0.12 <= 0.05 + 0.10
  report.write_report(rows, str(tmp_path), config_json="{}", device="cpu", command="x", elapsed_s=1.0,
                      classical=["cwf"], learned=["gan"], chosen={}, notes=[])
  text = (tmp_path / "report.md").read_text()
  assert "for: cwf at SNR 0.1 (1.24× the true MSE)." in text
  assert "Output gain α" in text and "| gan | 0.420 |" in text
