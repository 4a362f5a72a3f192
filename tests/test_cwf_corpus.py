"""The dataset-conditioned autoencoder: CWF triplets of the molecule corpus, the prior="cwf" generator, the
`autoencoder_cwf` method (CWF fitted per stack, then the network's correction) and its SURE fine-tuning."""

import jax
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise import denoisers
from cryojax_denoise.data import simulate
from cryojax_denoise.training import cwf_corpus
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.errors import InputError
from cryojax_denoise.models import Generator, host_init
from cryojax_denoise.training import restore, train
from cryojax_denoise.training.model import apply_generator


def test_dataset_conditions_are_a_pure_function_of_the_ids():
  a, b = cwf_corpus.dataset_conditions(0, 5, (0.02, 2.0)), cwf_corpus.dataset_conditions(0, 5, (0.02, 2.0))
  assert a == b and a != cwf_corpus.dataset_conditions(0, 6, (0.02, 2.0))
  conds = [cwf_corpus.dataset_conditions(0, d, (0.02, 2.0)) for d in range(200)]
  snrs = np.array([c["snr"] for c in conds])
  assert 0.02 <= snrs.min() and snrs.max() <= 2.0 and np.median(snrs) < 0.5  # log-uniform, not uniform
  assert 0.6 < np.mean([c["ctf"] for c in conds]) < 0.95 and 0.3 < np.mean([c["sign"] > 0 for c in conds]) < 0.7
  assert all(500 <= c["n_fit"] <= 2000 and c["defocus_range_A"][0] < c["defocus_range_A"][1] for c in conds)


@pytest.mark.slow
def test_triplets_hold_a_cwf_estimate_better_than_the_noisy_particles():
  t = cwf_corpus.simulate_triplets(0, 3, 32, 6, (0.02, 2.0), snr=0.1, ctf=True, n_fit=300)
  assert t["noisy"].shape == t["prior"].shape == t["clean"].shape == (6, 32, 32)
  mse = lambda x: float(np.mean((x - t["clean"]) ** 2))  # noqa: E731
  assert mse(t["prior"]) < 0.3 * mse(t["noisy"])
  again = cwf_corpus.simulate_triplets(0, 3, 32, 6, (0.02, 2.0), snr=0.1, ctf=True, n_fit=300)
  np.testing.assert_array_equal(again["prior"], t["prior"])


def test_coloured_draws_leave_the_white_datasets_as_they_were():
  for d in range(40):
    drawn = cwf_corpus.noise_spectrum(0, d, 0.75)
    always = cwf_corpus.noise_spectrum(0, d, 1.0)
    assert cwf_corpus.noise_spectrum(0, d, 0.0) is None and always is not None and drawn in (None, always)
  spectra = [cwf_corpus.noise_spectrum(0, d, 0.75) for d in range(400)]
  coloured = [s for s in spectra if s is not None]
  assert 0.68 < len(coloured) / 400 < 0.82
  for key, (lo, hi) in (("ratio", cwf_corpus.COLOURED_RATIO_RANGE), ("kc", cwf_corpus.COLOURED_KNEE_RANGE),
                        ("n", cwf_corpus.COLOURED_STEEPNESS_RANGE)):
    values = np.array([s[key] for s in coloured])
    assert lo <= values.min() and values.max() <= hi and values.max() > lo + 0.8 * (hi - lo)


def test_original_domain_loss_scores_the_coloured_back_output():
  """`cwf_loss_domain="original"`: a coloured dataset's targets come with the colouring filter 1/W, and the
  loss of a whitened estimate is then the MSE of it coloured back against the unwhitened target; a white
  dataset's filter is all ones (the plain loss)."""
  import ml_collections
  from cryojax_denoise.noise import whiten as wh
  from cryojax_denoise.training import losses

  rng = np.random.default_rng(0)
  psd = cwf_corpus.spectrum_psd({"ratio": 5.0, "kc": 0.1, "n": 4.0})
  data = {"dataset": np.array([0, 0, 1, 1]), "psd": np.stack([np.ones(129, np.float32), psd.astype(np.float32)])}
  pairs = cwf_corpus.CwfCorpusPairs.__new__(cwf_corpus.CwfCorpusPairs)
  pairs.config = ml_collections.ConfigDict({"cwf_loss_domain": "original"})
  truth, est = rng.normal(size=(2, 4, 32, 32)).astype(np.float32)
  filt = wh.whitening_filter(psd, (32, 32))
  white_domain = lambda a: np.concatenate([a[:2], np.asarray(wh.apply_filter(a[2:], filt))])  # noqa: E731
  target = pairs.scored(white_domain(truth), data, np.arange(4))
  assert target.shape == (4, 2, 32, 32)
  np.testing.assert_array_equal(target[:2, 1], 1.0)
  scored, weight = losses.split_target(target)
  got = losses._reconstruction(white_domain(est), scored, "l2", weight)
  np.testing.assert_allclose(float(got), np.mean((est - truth) ** 2), rtol=1e-4)
  pairs.config.cwf_loss_domain = "whitened"
  assert pairs.scored(truth, data, np.arange(4)) is truth


@pytest.mark.slow
def test_coloured_triplets_are_the_white_datasets_whitened():
  """A coloured dataset is stored as `denoise --config.noise=coloured` gives it to autoencoder_cwf: the same
  particles as the white dataset of its id, whitened by the dataset's spectrum, so its noise is white."""
  from cryojax_denoise.noise import spectrum as sp, whiten as wh

  d = next(d for d in range(40) if cwf_corpus.noise_spectrum(0, d, 1.0)["ratio"] > 4)
  kw = dict(snr=0.5, ctf=True, n_fit=300)
  white = cwf_corpus.simulate_triplets(0, d, 32, 48, (0.02, 2.0), **kw)
  col = cwf_corpus.simulate_triplets(0, d, 32, 48, (0.02, 2.0), coloured=1.0, **kw)
  psd = cwf_corpus.spectrum_psd(cwf_corpus.noise_spectrum(0, d, 1.0))
  np.testing.assert_allclose(col["psd"], psd, rtol=1e-6)
  np.testing.assert_array_equal(white["psd"], 1.0)
  filt = wh.whitening_filter(psd, (32, 32))
  np.testing.assert_allclose(col["clean"], np.asarray(wh.apply_filter(white["clean"], filt)), atol=1e-4)
  bands = sp.band_means(sp.radial_average(np.mean(np.abs(np.fft.fft2(col["noisy"] - col["clean"])) ** 2, 0)))
  assert bands.max() / bands.min() < 1.3 < wh.psd_flatness(psd)  # whitened: flat within the draw's scatter
  mse = lambda t, key: float(np.mean((t[key] - t["clean"]) ** 2))  # noqa: E731
  assert mse(col, "prior") < 0.5 * mse(col, "noisy")


def test_sign_flip_of_a_triplet_is_a_triplet_of_the_flipped_dataset():
  # The augmentation's claim: CWF fitted on −D maps −y to −CWF_D(y) (the fitted mean flips with the data).
  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 200, 32, snr=0.2, seed=1, ctf=False)
  sigma = np.full(200, float(np.std(ds.noisy - ds.clean)), np.float32)
  y = ds.noisy[:4]
  plus = np.asarray(denoisers.fit("cwf", ds.noisy, sigma)(y, sigma[:4]))
  minus = np.asarray(denoisers.fit("cwf", -ds.noisy, sigma)(-y, sigma[:4]))
  np.testing.assert_allclose(minus, -plus, atol=1e-4 * np.abs(plus).max())


def test_cwf_prior_generator_with_a_zero_head_is_the_prior_and_is_odd():
  gen = host_init(lambda: Generator((8, 16), (1, 0), noise_channel=True, odd=True, prior="cwf",
                                    rngs=nnx.Rngs(0)), 0)
  rng = np.random.default_rng(0)
  noisy = rng.normal(size=(3, 16, 16)).astype(np.float32) * 2 + 1
  prior = rng.normal(size=(3, 16, 16)).astype(np.float32)
  inputs = jax.numpy.asarray(np.stack([noisy, prior], 1))
  out = np.asarray(apply_generator(gen, inputs))
  assert not np.allclose(out, prior, atol=1e-3)
  np.testing.assert_allclose(np.asarray(apply_generator(gen, -inputs)), -out, atol=1e-4)
  with pytest.raises(ValueError, match="prior"):
    gen(jax.numpy.asarray(noisy))
  gen.head.kernel.set_value(gen.head.kernel[...] * 0)
  gen.head.bias.set_value(gen.head.bias[...] * 0)
  np.testing.assert_allclose(np.asarray(apply_generator(gen, inputs)), prior, atol=1e-4)


@pytest.fixture(scope="module")
def cwf_run(tmp_path_factory):
  """Two steps of the general_cwf recipe at 32² on one dataset: starts from the bundled autoencoder with
  its output layer zeroed."""
  workdir = str(tmp_path_factory.mktemp("cwf_run"))
  c = train.default_config("autoencoder")
  c.preset = "general_cwf"
  c.steps, c.image_size, c.batch_size, c.val_size = 2, 32, 4, 2
  c.cwf_datasets, c.cwf_keep = 1, 8
  c.eval_every = c.checkpoint_every = c.log_every = 1
  return train.train(c, workdir), workdir


@pytest.mark.slow
def test_general_cwf_recipe_starts_at_cwf_and_trains(cwf_run):
  row, workdir = cwf_run
  assert row["step"] == 2 and np.isfinite(row["val_mse"])
  rows = [__import__("json").loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  assert rows[0]["step"] == 1 and rows[-1]["step"] == 2
  den = restore.load_denoiser(workdir)
  assert den.config.data == "cwf_corpus" and den.config.model.prior == "cwf"
  x = np.random.default_rng(2).normal(size=(2, 32, 32)).astype(np.float32)
  with pytest.raises(InputError, match="prior"):
    den(x)


@pytest.mark.slow
def test_autoencoder_cwf_fits_on_the_stack_with_its_ctfs(cwf_run):
  from cryojax_denoise.data import ctf as ctf_lib

  _, workdir = cwf_run
  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 120, 32, snr=0.2, seed=4, ctf=True)
  ctf = ctf_lib.ctf_grid(ds.particles, ds.optics, 32, ds.pixel_size)
  noise = np.mean((ds.noisy[:8] - ds.clean[:8]) ** 2)
  for steps in (0, 3):  # as trained, and after 3 steps of SURE fine-tuning on the stack
    den = denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, checkpoint=workdir, finetune_steps=steps)
    out = np.asarray(den(ds.noisy[:8], None, ctf[:8]))
    assert out.shape == (8, 32, 32) and np.isfinite(out).all()
    assert np.mean((out - ds.clean[:8]) ** 2) < 0.5 * noise
    assert 0.0 <= den.correction_weight <= 1.0  # SURE's weight on the network's correction of CWF
  small = denoisers.fit("autoencoder_cwf", ds.noisy[:20], None, ctf[:20], checkpoint=workdir, finetune_steps=3)
  assert np.isfinite(np.asarray(small(ds.noisy[:2], None, ctf[:2]))).all()  # < 32 particles: not fine-tuned
  with pytest.raises(InputError, match="prior=cwf"):
    denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, checkpoint=restore.bundled_dir("autoencoder"))


@pytest.mark.slow
def test_autoencoder_cwf_finetunes_larger_boxes_on_crops_of_a_subset(cwf_run, monkeypatch):
  """Above `FINETUNE_CROP` the fine-tuning sees crops of a random subset of at most `FINETUNE_INPUT_GB` of
  inputs (here 16² crops of 48 of 120 particles of 32²), and the tuned network denoises whole particles."""
  from cryojax_denoise.data import ctf as ctf_lib
  from cryojax_denoise.training import learned

  _, workdir = cwf_run
  monkeypatch.setattr(learned, "FINETUNE_CROP", 16)
  monkeypatch.setattr(learned, "FINETUNE_INPUT_GB", 48 * 16 * 32 * 32 / 2**30)
  seen = {}
  finetune = train.finetune

  def spy(inputs, work, **kwargs):
    seen["shape"], seen["crop"] = np.shape(inputs), kwargs.get("crop_size")
    return finetune(inputs, work, **kwargs)

  monkeypatch.setattr(train, "finetune", spy)
  ds = simulate.simulate_dataset(load_source(image_size=32), 120, 32, snr=0.2, seed=4, ctf=True)
  ctf = ctf_lib.ctf_grid(ds.particles, ds.optics, 32, ds.pixel_size)
  den = denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, checkpoint=workdir, finetune_steps=3)
  assert seen == {"shape": (48, 4, 32, 32), "crop": 16}
  out = np.asarray(den(ds.noisy[:8], None, ctf[:8]))
  assert out.shape == (8, 32, 32)
  assert np.mean((out - ds.clean[:8]) ** 2) < 0.5 * np.mean((ds.noisy[:8] - ds.clean[:8]) ** 2)


def test_sure_loss_is_unbiased_with_a_prior_that_moves_with_the_probe():
  """For a linear f(x, p) = a·x + c·p with p = W x (W a blur), the SURE loss averaged over noise draws and
  probes equals the true MSE; leaving the prior fixed under the probe (no W b) biases it low."""
  from cryojax_denoise.training import self_supervised as ss

  rng = np.random.default_rng(0)
  h = 64
  yy, xx = np.mgrid[:h, :h]
  clean = (np.exp(-((yy - 24) ** 2 + (xx - 36) ** 2) / 120.0) * 3).astype(np.float32)
  k = np.fft.fft2(np.exp(-((yy - h // 2) ** 2 + (xx - h // 2) ** 2) / 4.0))
  k = (k / k[0, 0]).astype(np.complex64)

  def blur(a):
    return np.real(np.fft.ifft2(np.fft.fft2(a) * np.fft.fft2(np.fft.ifftshift(np.fft.ifft2(k).real)))).astype(np.float32)

  def f(x, p):
    return 0.3 * x + 0.6 * p

  n = 200
  x = clean + rng.normal(size=(n, h, h)).astype(np.float32)  # σ = 1: the Haar MAD estimate is ~1
  p = np.stack([blur(xi) for xi in x])
  b = rng.choice(np.float32([-1, 1]), (n, h, h))
  wb = np.stack([blur(bi) for bi in b])
  true = float(np.mean((f(x, p) - clean) ** 2))
  est, _ = ss.sure(f, jax.numpy.asarray(x), None, None, eps=0.01, prior=jax.numpy.asarray(p),
                   probe=(jax.numpy.asarray(b), jax.numpy.asarray(wb)))
  assert abs(float(est) - true) < 0.05 * true  # σ is the Haar MAD estimate, as in training
  frozen, _ = ss.sure(f, jax.numpy.asarray(x), None, None, eps=0.01, prior=jax.numpy.asarray(p),
                      probe=(jax.numpy.asarray(b), jax.numpy.zeros_like(jax.numpy.asarray(wb))))
  assert float(frozen) < true - 0.1 * true


def test_sure_loss_with_a_colouring_is_unbiased_for_the_mse_coloured_back():
  """On whitened particles with `sure_colouring` (V² radial) the SURE loss estimates ‖V(f − clean)‖²/N, the
  MSE of the output coloured back, not the whitened MSE (which differs here by > 30%)."""
  from cryojax_denoise.noise import whiten as wh
  from cryojax_denoise.training import self_supervised as ss

  rng = np.random.default_rng(1)
  h, n = 64, 200
  yy, xx = np.mgrid[:h, :h]
  clean = (np.exp(-((yy - 24) ** 2 + (xx - 36) ** 2) / 120.0) * 3).astype(np.float32)
  radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(h), indexing="ij"))
  smooth = np.exp(-(radius / 0.1) ** 2).astype(np.float32)
  f = lambda x: 0.2 * x + 0.8 * wh.apply_filter(x, smooth)  # noqa: E731
  profile = 1.0 + 5.0 * np.exp(-(np.linspace(0, 0.5, 33) / 0.05) ** 2)
  v = np.sqrt(ss.colouring_grid(profile, (h, h)))
  x = clean + rng.normal(size=(n, h, h)).astype(np.float32)
  b = rng.choice(np.float32([-1, 1]), (n, h, h))
  err = np.asarray(f(x)) - clean
  true = float(np.mean(np.asarray(wh.apply_filter(err, v)) ** 2))
  whitened = float(np.mean(err ** 2))
  assert abs(true - whitened) > 0.3 * whitened
  est, _ = ss.sure(f, jax.numpy.asarray(x), None, None, eps=0.01, probe=(jax.numpy.asarray(b), None),
                   colouring=tuple(profile))
  assert abs(float(est) - true) < 0.05 * true
  back = ss.colouring_grid(ss.colouring_profile(1.0 / v), (h, h))  # a filter's V² read back from its profile
  np.testing.assert_allclose(back, v ** 2, rtol=0.06)


@pytest.mark.slow
def test_general_cwf_init_loads_the_bundled_autoencoder_and_starts_as_cwf():
  from cryojax_denoise.training.model import build_generator, load_init

  c = train.default_config("autoencoder")
  c.preset = "general_cwf"
  c = train.resolve(c)
  assert c.model.prior == "cwf" and c.init_head == "zero"
  gen = build_generator(c)
  load_init(gen, c.init, zero_head=c.init_head == "zero")
  rng = np.random.default_rng(3)
  noisy, prior = rng.normal(size=(2, 2, 64, 64)).astype(np.float32)
  inputs = jax.numpy.asarray(np.stack([noisy, prior], 1))
  np.testing.assert_allclose(np.asarray(apply_generator(gen, inputs)), prior, atol=1e-4)
  kernel = np.asarray(gen.down[0].kernel[...])
  assert np.abs(kernel).max() > 0  # the rest of the network is the bundled autoencoder's, not zeros


@pytest.mark.slow
def test_bundled_autoencoder_cwf_loads_and_denoises_a_stack():
  from cryojax_denoise.data import ctf as ctf_lib

  den = restore.load_denoiser(restore.bundled_dir("autoencoder_cwf"))
  assert den.config.data == "cwf_corpus" and den.config.model.prior == "cwf" and den.config.model.odd
  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 100, 32, snr=0.2, seed=5, ctf=True)
  ctf = ctf_lib.ctf_grid(ds.particles, ds.optics, 32, ds.pixel_size)
  out = np.asarray(denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, finetune_steps=0)(ds.noisy[:8], None, ctf[:8]))
  assert out.shape == (8, 32, 32) and np.isfinite(out).all()
  assert np.mean((out - ds.clean[:8]) ** 2) < 0.5 * np.mean((ds.noisy[:8] - ds.clean[:8]) ** 2)
  # The sweep offers the stack's CWF fit (`cwf=`): reused when its basis reach is the network's prior's
  # (PRIOR_REACH, the inscribed disk), refitted with that reach when not (the registered cwf's, L/16 past the
  # edge): the same denoiser either way.
  for reach in (cwf_corpus.PRIOR_REACH, None):
    cwf = denoisers.fit("cwf", ds.noisy, None, ctf, reach=reach)
    shared = denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, finetune_steps=0, cwf=cwf)
    np.testing.assert_allclose(np.asarray(shared(ds.noisy[:8], None, ctf[:8])), out, atol=1e-5)
  with pytest.raises(InputError, match="unknown parameter"):
    denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, finetune_step=0)


def test_coloured_noise_gives_autoencoder_cwf_the_model_trained_on_whitened_datasets(monkeypatch):
  """Under a spectrum (`noise.methods.fit_coloured`) autoencoder_cwf loads the bundled model of the coloured
  corpus (`general_cwf_coloured`); under white noise, or with a checkpoint given, what it loaded before."""
  from cryojax_denoise.noise import methods as noise_methods, whiten as wh
  from cryojax_denoise.training import learned

  from cryojax_denoise.denoisers import registry

  loaded, cwf_fits = [], []
  real_load, real_fit = learned._load, registry.fit
  monkeypatch.setattr(learned, "_load",
                      lambda checkpoint, kind: loaded.append((checkpoint, kind)) or real_load(checkpoint, kind))

  def counting_fit(name, *args, **kw):
    if name == "cwf":
      cwf_fits.append(kw.get("reach"))
    return real_fit(name, *args, **kw)

  monkeypatch.setattr(registry, "fit", counting_fit)
  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 64, 32, snr=0.5, seed=7, ctf=False)
  psd = wh.family_psd("plateau", np.linspace(0, 0.5, 33), ratio=4.0, kc=0.1, n=4.0)
  noise_methods.fit_coloured("autoencoder_cwf", ds.noisy, None, None, psd, finetune_steps=0)
  assert cwf_fits == [None]  # its prior is the registered cwf: one fit, prior and base
  noise_methods.fit_coloured("autoencoder_cwf", ds.noisy, None, None, None, finetune_steps=0)
  assert cwf_fits == [None, None, 0.0]  # the white-noise model's prior is the inscribed disk's
  bundled = restore.bundled_dir("autoencoder_cwf")
  noise_methods.fit_coloured("autoencoder_cwf", ds.noisy, None, None, psd, finetune_steps=0, checkpoint=bundled)
  assert loaded == [(None, learned.COLOURED_KIND), (None, "autoencoder_cwf"), (bundled, learned.COLOURED_KIND)]
  den = restore.load_denoiser(restore.bundled_dir(learned.COLOURED_KIND))
  assert den.config.data == "cwf_corpus" and den.config.cwf_coloured > 0 and den.config.model.prior == "cwf"
  assert learned.prior_reach_px(den.config, 64) is None
  assert learned.prior_reach_px(restore.load_denoiser(bundled).config, 64) == 0.0


def test_autoencoder_cwf_without_its_correction_is_the_registered_cwf(monkeypatch):
  """The correction is weighed against the registered cwf (its basis reach), not the network's reach-0
  prior: with β = 0 autoencoder_cwf's output is the registered cwf's, and β = 1 is the network's output."""
  from cryojax_denoise.data import ctf as ctf_lib
  from cryojax_denoise.training import learned

  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 100, 32, snr=0.2, seed=5, ctf=True)
  ctf = ctf_lib.ctf_grid(ds.particles, ds.optics, 32, ds.pixel_size)
  cwf = np.asarray(denoisers.fit("cwf", ds.noisy, None, ctf)(ds.noisy[:8], None, ctf[:8]))
  outs = {}
  for beta in (0.0, 1.0):
    monkeypatch.setattr(learned, "correction_weight", lambda *a, b=beta, **k: b)
    outs[beta] = np.asarray(denoisers.fit("autoencoder_cwf", ds.noisy, None, ctf, finetune_steps=0)(
        ds.noisy[:8], None, ctf[:8]))
  np.testing.assert_allclose(outs[0.0], cwf, atol=1e-6)
  assert np.mean((outs[1.0] - cwf) ** 2) > 1e-4 * np.mean(cwf ** 2)


def test_correction_weight_under_coloured_noise_weighs_the_coloured_back_output():
  """Under a spectrum β is SURE's for the output coloured back (what `denoise` returns), not for the whitened
  particles': on whitened images of smooth signals with white noise, a coarse and a fine low-pass as the base
  and the correction, β lands at the coloured-back optimum (clean images known here), far from the whitened
  one; a flat colouring gives the white-noise β itself."""
  from cryojax_denoise.noise import whiten as wh
  from cryojax_denoise.training import learned

  rng = np.random.default_rng(3)
  k = np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij"))
  shape_of = lambda cut: np.exp(-(k / cut) ** 2).astype(np.float32)  # noqa: E731
  x = np.asarray(wh.apply_filter(rng.standard_normal((128, 32, 32)), 3.0 * shape_of(0.08)))
  y = (x + rng.standard_normal(x.shape)).astype(np.float32)
  sigma = np.ones(len(y), np.float32)
  coarse, fine = (lambda b, s, c, f=shape_of(cut): np.asarray(wh.apply_filter(b, f)) for cut in (0.04, 0.25))
  v = (1.0 + 6.0 * np.exp(-(k / 0.05) ** 2)).astype(np.float32)
  v /= np.sqrt(np.mean(v ** 2))  # V = 1/W has mean square 1 (`whiten.whitening_filter`)

  def best(weight):  # ⟨x − b, o − b⟩ / ‖o − b‖² with the error weighed by `weight` (clean images known)
    b, o, xw = (np.asarray(wh.apply_filter(a, weight)) for a in (coarse(y, None, None), fine(y, None, None), x))
    return float(np.sum((xw - b) * (o - b)) / np.sum((o - b) ** 2))

  white_best, coloured_best = best(np.ones_like(v)), best(v)
  assert coloured_best - white_best > 0.25  # the two MSEs want different corrections
  beta = learned.correction_weight(y, sigma, None, coarse, fine, colouring=v)
  assert abs(beta - coloured_best) < 0.1 < abs(beta - white_best)
  white = learned.correction_weight(y, sigma, None, coarse, fine)
  flat = learned.correction_weight(y, sigma, None, coarse, fine, colouring=np.ones_like(v))
  assert abs(white - white_best) < 0.1 and abs(flat - white) < 1e-3


def test_get_autoencoder_cwf_fits_once_then_reuses(monkeypatch):
  """`get("autoencoder_cwf")` used to refit CWF (and fine-tune) on every batch call: now the first
  batch of a size fits, later batches reuse that fit (same output for the same images)."""
  from cryojax_denoise.training import learned

  calls = []
  real = learned.fit_autoencoder_cwf

  def counting(*args, **kwargs):
    calls.append(np.shape(args[0]))
    return real(*args, **kwargs)

  monkeypatch.setattr(learned, "fit_autoencoder_cwf", counting)
  src = load_source(image_size=32)
  ds = simulate.simulate_dataset(src, 64, 32, snr=0.2, seed=6, ctf=False)
  den = denoisers.get("autoencoder_cwf", finetune_steps=0)
  first = np.asarray(den(ds.noisy[:32]))  # batches of one size: one compilation of the network
  second = np.asarray(den(ds.noisy[32:]))
  again = np.asarray(den(ds.noisy[:32]))
  assert calls == [(32, 32, 32)]  # one fit, on the first batch
  assert first.shape == second.shape == (32, 32, 32) and np.isfinite(second).all()
  np.testing.assert_allclose(again, first, atol=1e-5)
  assert len(calls) == 1
