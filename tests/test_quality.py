"""FD-digits (diffusion_jax.quality): the Fréchet distance against closed forms, its response to
corrupted digits, precision/recall, the bootstrap SE, the shipped feature weights, bad input."""

import os

import numpy as np
import pytest

from diffusion_jax import quality
from diffusion_jax.data import digits as digits_lib
from diffusion_jax.data import pipeline
from experiments.train_digits_features import add_noise, blur, shift

# Measured with the shipped weights (python -m experiments.train_digits_features prints them).
FD_TRAIN_VS_TEST = 6.771


@pytest.fixture(scope="module")
def feature_fn():
    return quality.digits_feature_fn()


@pytest.fixture(scope="module")
def test_images():
    return pipeline.full_split("digits", "test")


@pytest.fixture(scope="module")
def test_features(feature_fn, test_images):
    return feature_fn(test_images)


@pytest.fixture(scope="module")
def train_features(feature_fn):
    return feature_fn(pipeline.full_split("digits", "train"))


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------
# frechet_distance: closed forms.


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    var1, var2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = quality.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_commuting_covariances_closed_form():
    # C_i = Q diag(λ_i) Qᵀ share eigenvectors: (C_1 C_2)^{1/2} = Q diag(√(λ_1 λ_2)) Qᵀ.
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam1, lam2 = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    cov1, cov2 = (q * lam1) @ q.T, (q * lam2) @ q.T
    mu = rng.standard_normal(d)
    expected = np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2) + 4.0 * d
    got = quality.frechet_distance(mu, cov1, mu + 2.0, cov2)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_matches_sqrtm_and_is_symmetric():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 10
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    cov1, cov2 = _random_spd(rng, d), _random_spd(rng, d)
    root = scipy_linalg.sqrtm(cov1 @ cov2)
    assert np.max(np.abs(root.imag)) < 1e-8
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * root.real)
    got = quality.frechet_distance(mu1, cov1, mu2, cov2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert quality.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(got, rel=1e-9)


def test_frechet_distance_of_identical_gaussians_is_zero_even_when_singular():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((5, 8))  # 5 samples of 8 features: a rank-4 covariance
    mu, cov = quality.feature_statistics(f)
    assert np.linalg.matrix_rank(cov) == 4
    fd = quality.frechet_distance(mu, cov, mu, cov)
    assert 0.0 <= fd < 1e-6 * np.trace(cov)
    full = _random_spd(rng, 8)
    assert 0.0 <= quality.frechet_distance(mu, full, mu, full) < 1e-10 * np.trace(full)


def test_identical_feature_sets_give_zero(train_features):
    fd = quality.fd_from_features(train_features, train_features)
    scale = 2 * np.trace(np.cov(train_features.T))
    assert 0.0 <= fd < 1e-10 * scale


def test_feature_statistics_matches_numpy():
    f = np.random.default_rng(4).standard_normal((50, 3)).astype(np.float32)
    mu, cov = quality.feature_statistics(f)
    assert mu.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f.astype(np.float64).T), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# FD-digits on real and corrupted digits.


def test_fd_train_vs_test_is_small(train_features, test_features):
    fd = quality.fd_from_features(train_features, test_features)
    assert fd == pytest.approx(FD_TRAIN_VS_TEST, abs=0.02)
    # A finite-sample figure: same distribution, different images; mild blur is far worse.
    assert fd < 10.0


@pytest.mark.parametrize(
    ("corrupt", "levels"),
    [("blur", (0.5, 0.75, 1.0, 1.5, 2.0)),
     ("noise", (0.1, 0.2, 0.4, 0.8)),
     ("shift", (1, 2, 3))],
)
def test_fd_grows_monotonically_with_corruption(feature_fn, test_images, test_features, corrupt, levels):
    rng = np.random.default_rng(0)
    apply = {"blur": lambda x, s: blur(x, s),
             "noise": lambda x, s: add_noise(x, s, rng),
             "shift": lambda x, s: shift(x, s)}[corrupt]
    fds = [quality.fd_from_features(feature_fn(apply(test_images, s)), test_features) for s in levels]
    assert np.all(np.diff(fds) > 0), dict(zip(levels, fds, strict=True))
    # Blur (even σ = 0.5) and a 1-pixel shift are big departures next to train vs test.
    if corrupt != "noise":
        assert fds[0] > 3 * FD_TRAIN_VS_TEST


# ---------------------------------------------------------------------------------------------
# Precision and recall.


def test_precision_recall_closed_form_1d():
    real = np.arange(5.0)[:, None]  # k = 1 radii: 1 each
    fake = np.array([[0.5], [10.0]])  # k = 1 radii: 9.5 each
    precision, recall = quality.precision_recall(real, fake, k=1)
    assert precision == 0.5  # 0.5 lies in a real ball, 10 does not
    assert recall == 1.0  # every real point lies within 9.5 of 0.5


def test_precision_recall_identical_sets(test_features):
    assert quality.precision_recall(test_features, test_features) == (1.0, 1.0)
    assert quality.precision_recall(test_features, test_features, k=1) == (1.0, 1.0)


def test_precision_drops_with_noise(feature_fn, test_images, test_features):
    rng = np.random.default_rng(0)
    mild, _ = quality.precision_recall(test_features, feature_fn(add_noise(test_images, 0.2, rng)))
    heavy, _ = quality.precision_recall(test_features, feature_fn(add_noise(test_images, 0.8, rng)))
    assert mild > 0.9
    assert heavy < 0.8 and heavy < mild


# ---------------------------------------------------------------------------------------------
# Bootstrap and the report.


def test_bootstrap_se_positive_and_deterministic(train_features, test_features):
    fds = quality.bootstrap_fd(train_features, test_features, num_bootstrap=10, seed=0)
    assert fds.shape == (10,) and np.all(fds > 0)
    np.testing.assert_array_equal(fds, quality.bootstrap_fd(train_features, test_features,
                                                            num_bootstrap=10, seed=0))
    assert not np.array_equal(fds, quality.bootstrap_fd(train_features, test_features,
                                                         num_bootstrap=10, seed=1))
    report = quality.quality_from_features(train_features, test_features, num_bootstrap=10, seed=0)
    assert report.fd_se == pytest.approx(np.std(fds, ddof=1), rel=1e-12)
    assert 0.0 < report.fd_se < report.fd


def test_fd_digits_report(test_images):
    samples = pipeline.full_split("digits", "train")
    report = quality.fd_digits(samples, reference="test", num_bootstrap=10, seed=0)
    assert isinstance(report, quality.QualityReport)
    assert report.fd == pytest.approx(FD_TRAIN_VS_TEST, abs=0.02)
    assert (report.num_samples, report.num_reference) == (1497, 300)
    assert 0.8 < report.precision <= 1.0 and 0.8 < report.recall <= 1.0
    assert report.fd_se > 0
    text = str(report)
    assert text.startswith(f"FD {report.fd:.3f} ± {report.fd_se:.3f}") and "precision" in text and "recall" in text
    # Against itself (train split as reference): FD 0, precision = recall = 1.
    same = quality.fd_digits(samples, reference="train", num_bootstrap=0, seed=None)
    assert same.fd < 1e-6 and np.isnan(same.fd_se) and "±" not in str(same)
    assert (same.precision, same.recall) == (1.0, 1.0)


def test_sample_quality_takes_any_feature_fn(test_images):
    flat = lambda x: np.asarray(x).reshape(x.shape[0], -1)[:, :16]  # any (N, F) features
    report = quality.sample_quality(test_images, test_images, feature_fn=flat, num_bootstrap=0, seed=None)
    assert report.fd < 1e-8 and (report.precision, report.recall) == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The shipped weights.


def test_shipped_weights_reproduce_recorded_accuracy(test_images):
    assert os.path.getsize(quality.DIGITS_FEATURES_PATH) < 200_000
    params, meta = quality.load_digits_classifier()
    assert meta["feature_dim"] == 64 and meta["seed"] == 0
    assert all(v.dtype == np.float32 for v in params.values())
    logits = quality.digits_feature_fn(logits=True)(test_images)
    _, labels = digits_lib.load_digits("test")
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert abs(accuracy - meta["test_accuracy"]) <= 1 / 300 + 1e-12
    assert accuracy >= 0.98


def test_feature_fn_shape_batching_and_clipping(feature_fn, test_images, test_features):
    assert test_features.shape == (300, 64) and test_features.dtype == np.float32
    small = quality.digits_feature_fn(batch_size=7)(test_images[:23])
    np.testing.assert_allclose(small, test_features[:23], rtol=1e-5, atol=1e-5)
    loud = 3.0 * test_images[:5]  # inputs are clipped to [-1, 1]
    np.testing.assert_allclose(feature_fn(loud), feature_fn(np.clip(loud, -1, 1)), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: errors that name the argument and say what was expected.


def test_bad_input_errors(train_features, test_features, test_images):
    with pytest.raises(ValueError, match=r"samples must have shape \(N, 8, 8, 1\)"):
        quality.fd_digits(test_images[..., 0], seed=0)
    nan = test_images.copy()
    nan[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="samples holds 1 NaN or Inf"):
        quality.fd_digits(nan, seed=0)
    with pytest.raises(TypeError, match="samples must be float images"):
        quality.fd_digits(np.zeros((100, 8, 8, 1), np.uint8), seed=0)
    with pytest.raises(ValueError, match="needs at least 65"):
        quality.fd_digits(test_images[:10], seed=0)
    with pytest.raises(ValueError, match="reference must be one of"):
        quality.fd_digits(test_images, reference="valid", seed=0)
    with pytest.raises(ValueError, match="seed is required"):
        quality.fd_digits(test_images, seed=None)
    with pytest.raises(ValueError, match="num_bootstrap must be 0"):
        quality.quality_from_features(train_features, test_features, num_bootstrap=1, seed=0)
    with pytest.raises(ValueError, match="same feature dimension"):
        quality.fd_from_features(train_features, test_features[:, :10])
    with pytest.raises(ValueError, match=r"features must have shape \(num_samples, feature_dim\)"):
        quality.feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="features has 1 samples; a covariance needs at least 2"):
        quality.feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="k-NN radii with k=3 needs at least 4"):
        quality.precision_recall(test_features, test_features[:3])
    with pytest.raises(ValueError, match="feature_fn must return features of shape"):
        quality.sample_quality(test_images, test_images, feature_fn=lambda x: np.zeros((3, 2)),
                               num_bootstrap=0, seed=None)


def test_frechet_distance_rejects_bad_covariances():
    mu, eye = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"cov2 must have shape \(3, 3\)"):
        quality.frechet_distance(mu, eye, mu, np.eye(4))
    with pytest.raises(ValueError, match="mu2 must have the shape of mu1"):
        quality.frechet_distance(mu, eye, np.zeros(4), eye)
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        quality.frechet_distance(mu, np.triu(np.ones((3, 3))), mu, eye)
    with pytest.raises(ValueError, match="cov2 must be positive semi-definite"):
        quality.frechet_distance(mu, eye, mu, np.diag([1.0, 1.0, -0.5]))
    with pytest.raises(ValueError, match="mu1 holds 1 NaN or Inf"):
        quality.frechet_distance(np.array([0.0, np.nan, 0.0]), eye, mu, eye)
