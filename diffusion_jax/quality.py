"""Sample quality: Fréchet distance, precision and recall in a feature space ("FD-digits").

FID (Heusel et al. 2017) compares two image sets through Gaussians fitted to their features in a
pretrained classifier (Inception-v3 pool3). FD-digits is the same for the embedded 8×8 digits,
with the features of a small classifier trained on the digits train split (shipped as
``diffusion_jax/data/digits_features.npz``; ``python -m experiments.train_digits_features``
rebuilds it). With μ, C the mean and covariance of the features of each set,

    FD = ‖μ_1 − μ_2‖² + tr(C_1 + C_2 − 2 (C_1 C_2)^{1/2}).

Beside the distance: precision and recall (Kynkäänniemi et al. 2019) — the fraction of generated
samples inside the real data's k-NN manifold (fidelity), and of real samples inside the generated
k-NN manifold (coverage) — and a bootstrap standard error of FD over resampling the generated set.

    from diffusion_jax import quality
    report = quality.fd_digits(samples, seed=0)     # samples (N, 8, 8, 1) in [-1, 1]
    print(report)   # the train split as samples: FD 6.771 ± 0.621, precision 0.920, recall 0.877 ...

FD estimates are biased upward at small N (the bias falls like 1/N): compare models only at the
same N against the same reference set. The bootstrap SE covers the generated set's sampling
noise, not the reference set's.

Other data sets (CIFAR-10 FID): ``sample_quality`` takes any ``feature_fn``. For FID that is an
Inception-v3 whose weights YOU supply as a file (nothing is downloaded here), e.g. the FID
network of pytorch-fid / TTUR converted to an npz, run by your own jnp forward pass.
``feature_fn(images)`` gets float images (N, 32, 32, 3) in [-1, 1] (this library's model range),
and must return a float array (N, 2048): the pool3 features of the images resized to 299×299
(bilinear) and scaled as that network expects. FID is comparable to published figures only with
the standard weights, resizing and protocol (e.g. 50,000 samples against the train split)::

    import jax, numpy as np
    from diffusion_jax import quality
    from diffusion_jax.data import full_split

    weights = dict(np.load("/path/to/inception_v3_fid.npz"))     # your file
    @jax.jit
    def _pool3(x):                                                # (B, 32, 32, 3) in [-1, 1]
        x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear")
        return my_inception_pool3(weights, x)                     # your forward pass: (B, 2048)

    def inception_features(images):
        return np.concatenate([np.asarray(_pool3(images[i:i + 250]))
                               for i in range(0, len(images), 250)])

    reference = full_split("cifar10", "train")   # (50000, 32, 32, 3); make data DATASET=cifar10
    report = quality.sample_quality(samples, reference, feature_fn=inception_features,
                                    num_bootstrap=10, seed=0)

Features computed once (e.g. of the reference set, saved to disk) go straight to
``quality_from_features`` / ``fd_from_features``.

All statistics are computed in float64 numpy; the digits feature extractor runs in jitted jnp.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import check_choice, check_finite, is_int
from diffusion_jax.data.pipeline import full_split

__all__ = [
    "DIGITS_FEATURES_PATH",
    "QualityReport",
    "bootstrap_fd",
    "digits_classifier_apply",
    "digits_feature_fn",
    "fd_digits",
    "fd_from_features",
    "feature_statistics",
    "frechet_distance",
    "load_digits_classifier",
    "precision_recall",
    "quality_from_features",
    "sample_quality",
]

DIGITS_FEATURES_PATH = str(importlib.resources.files("diffusion_jax.data").joinpath("digits_features.npz"))
DIGITS_IMAGE_SHAPE = (8, 8, 1)

# Relative tolerances for round-off: an eigenvalue of a covariance (or of √C_2 C_1 √C_2) below
# −PSD_RTOL·(largest eigenvalue) is an error, not round-off; so is a Fréchet distance below
# −FD_RTOL·(‖Δμ‖² + tr C_1 + tr C_2). 1e-6 leaves room for covariances computed in float32.
PSD_RTOL = 1e-6
SYMMETRY_RTOL = 1e-6
FD_RTOL = 1e-6


# --------------------------------------------------------------------------------------------
# Checks at the public edges.


def _as_float64(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        bad = int(x.size - np.isfinite(x).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf values; expected finite numbers.")
    return x


def _check_features(name: str, features, *, min_rows: int, why: str) -> np.ndarray:
    """(N, F) finite features with N >= min_rows, as float64."""
    f = _as_float64(name, features)
    if f.ndim != 2:
        raise ValueError(f"{name} must have shape (num_samples, feature_dim), got shape {f.shape}.")
    if f.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature, got shape {f.shape}.")
    if f.shape[0] < min_rows:
        raise ValueError(f"{name} has {f.shape[0]} samples; {why} needs at least {min_rows}.")
    return f


def _check_int_at_least(name: str, value, lowest: int) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= {lowest}, got {value!r}.")
    if value < lowest:
        raise ValueError(f"{name} must be >= {lowest}, got {value}.")
    return int(value)


def _check_covariance(name: str, cov, dim: int) -> np.ndarray:
    cov = _as_float64(name, cov)
    if cov.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the mean, got {cov.shape}.")
    scale = max(float(np.max(np.abs(cov))), np.finfo(np.float64).tiny)
    asym = float(np.max(np.abs(cov - cov.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric; max |C - Cᵀ| = {asym:.3g} "
                         f"(largest entry {scale:.3g}).")
    return 0.5 * (cov + cov.T)


# --------------------------------------------------------------------------------------------
# The Fréchet distance between two Gaussians.


def _psd_eigh(name: str, m: np.ndarray):
    """Eigen-decomposition of a symmetric PSD matrix, tiny negative eigenvalues clipped to 0."""
    vals, vecs = np.linalg.eigh(m)
    top = max(float(np.max(np.abs(vals))), np.finfo(np.float64).tiny)
    if vals[0] < -PSD_RTOL * top:
        raise ValueError(f"{name} must be positive semi-definite; its smallest eigenvalue is "
                         f"{vals[0]:.3g} (largest {top:.3g}).")
    return np.clip(vals, 0.0, None), vecs


class _Gaussian(NamedTuple):
    """Float64 mean (D,), covariance (D, D), its PSD square root and trace (checked once)."""
    mean: np.ndarray
    cov: np.ndarray
    sqrt_cov: np.ndarray
    trace: float


def _gaussian(name: str, mean: np.ndarray, cov: np.ndarray) -> _Gaussian:
    vals, vecs = _psd_eigh(name, cov)
    sqrt_cov = (vecs * np.sqrt(vals)) @ vecs.T
    return _Gaussian(mean, cov, sqrt_cov, float(np.trace(cov)))


def _frechet(mean1: np.ndarray, cov1: np.ndarray, ref: _Gaussian) -> float:
    """FD of N(mean1, cov1) to ``ref``: tr (C_1 C_2)^{1/2} = Σ √λ(√C_2 C_1 √C_2), all λ ≥ 0."""
    m = ref.sqrt_cov @ cov1 @ ref.sqrt_cov
    vals, _ = _psd_eigh("√C_2 C_1 √C_2", 0.5 * (m + m.T))
    trace_sqrt = float(np.sum(np.sqrt(vals)))
    diff = mean1 - ref.mean
    mean_term = float(diff @ diff)
    fd = mean_term + float(np.trace(cov1)) + ref.trace - 2.0 * trace_sqrt
    scale = mean_term + float(np.trace(cov1)) + ref.trace
    if fd < 0.0:
        if fd < -FD_RTOL * scale:
            raise FloatingPointError(f"Fréchet distance came out negative ({fd:.3g}, scale "
                                     f"{scale:.3g}) beyond round-off; the covariances are "
                                     f"numerically unreliable.")
        fd = 0.0
    return fd


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ_1, C_1) and N(μ_2, C_2), in float64.

        FD = ‖μ_1 − μ_2‖² + tr(C_1) + tr(C_2) − 2 tr (C_1 C_2)^{1/2},

    with tr (C_1 C_2)^{1/2} = Σ_i √λ_i(√C_2 C_1 √C_2): the eigenvalues of a symmetric PSD
    matrix, so no complex square root arises (unlike ``scipy.linalg.sqrtm(C_1 @ C_2)``).

    Args:
      mu1, mu2: means, shape (D,).
      cov1, cov2: symmetric positive semi-definite covariances, shape (D, D).

    Returns:
      FD ≥ 0 as a Python float. A negative value within round-off (FD_RTOL of the scale
      ‖Δμ‖² + tr C_1 + tr C_2) is returned as 0; beyond it, FloatingPointError.

    Raises:
      ValueError: wrong shapes, NaN/Inf, an asymmetric or indefinite covariance.
    """
    mu1, mu2 = _as_float64("mu1", mu1), _as_float64("mu2", mu2)
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must have shape (D,), got shape {mu1.shape}.")
    if mu2.shape != mu1.shape:
        raise ValueError(f"mu2 must have the shape of mu1 {mu1.shape}, got {mu2.shape}.")
    dim = mu1.shape[0]
    cov1, cov2 = _check_covariance("cov1", cov1, dim), _check_covariance("cov2", cov2, dim)
    _psd_eigh("cov1", cov1)
    return _frechet(mu1, cov1, _gaussian("cov2", mu2, cov2))


def _statistics(f: np.ndarray):
    mean = f.mean(axis=0)
    centred = f - mean
    cov = centred.T @ centred / (f.shape[0] - 1)
    return mean, 0.5 * (cov + cov.T)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) (ddof = 1), float64, of features (N, F), N ≥ 2."""
    f = _check_features("features", features, min_rows=2, why="a covariance")
    return _statistics(f)


def _check_pair(features_a, features_b, name_a: str, name_b: str):
    a = _check_features(name_a, features_a, min_rows=2, why="a covariance")
    b = _check_features(name_b, features_b, min_rows=2, why="a covariance")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same feature dimension, got "
                         f"{a.shape[1]} and {b.shape[1]}.")
    dim = a.shape[1]
    for name, f in ((name_a, a), (name_b, b)):
        if f.shape[0] <= dim:
            raise ValueError(f"{name} has {f.shape[0]} samples of {dim} features; a full-rank "
                             f"covariance (and a meaningful FD) needs at least {dim + 1} "
                             f"(FD is biased upward at small N: use thousands if you can).")
    return a, b


def fd_from_features(features_a, features_b) -> float:
    """FD between the Gaussians fitted to features_a (N_a, F) and features_b (N_b, F); N > F."""
    a, b = _check_pair(features_a, features_b, "features_a", "features_b")
    mean_b, cov_b = _statistics(b)
    return _frechet(*_statistics(a), _gaussian("covariance of features_b", mean_b, cov_b))


# --------------------------------------------------------------------------------------------
# Bootstrap standard error over the generated set.


def _bootstrap(fake: np.ndarray, ref: _Gaussian, num_bootstrap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = fake.shape[0]
    fds = np.empty(num_bootstrap)
    for b in range(num_bootstrap):  # one replicate per pass; each is a (F, F) covariance
        fds[b] = _frechet(*_statistics(fake[rng.integers(0, n, size=n)]), ref)
    return fds


def bootstrap_fd(fake_features, real_features, *, num_bootstrap: int, seed: int) -> np.ndarray:
    """FD of ``num_bootstrap`` resamples (with replacement, same size) of the generated set.

    Args:
      fake_features: (N, F) features of the generated samples (resampled).
      real_features: (M, F) features of the reference set (held fixed).
      num_bootstrap: number of replicates B ≥ 2.
      seed: seed of numpy's ``default_rng`` (required: the same seed gives the same replicates).

    Returns:
      float64 array (B,); its standard deviation (ddof = 1) is the bootstrap SE of FD.
    """
    fake, real = _check_pair(fake_features, real_features, "fake_features", "real_features")
    num_bootstrap = _check_int_at_least("num_bootstrap", num_bootstrap, 2)
    seed = _check_int_at_least("seed", seed, 0)
    return _bootstrap(fake, _gaussian("reference covariance", *_statistics(real)), num_bootstrap, seed)


# --------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al. 2019).


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def _chunks(n: int, rows: int):
    return (slice(s, min(s + rows, n)) for s in range(0, n, rows))


def _knn_sq_radii(f: np.ndarray, k: int, rows: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row (the row itself is index 0)."""
    return np.concatenate([np.partition(_sq_distances(f[s], f), k, axis=1)[:, k]
                           for s in _chunks(f.shape[0], rows)])


def _coverage(query: np.ndarray, support: np.ndarray, sq_radii: np.ndarray, rows: int) -> float:
    """Fraction of query rows within radius_j of some support row j (a union of balls)."""
    # float64 round-off of ‖q‖² + ‖s‖² − 2 q·s is far below this tolerance.
    atol = 1e-10 * float(np.mean(np.sum(support * support, 1)) + np.finfo(np.float64).tiny)
    inside = np.concatenate([np.any(_sq_distances(query[s], support) <= sq_radii[None, :] + atol, 1)
                             for s in _chunks(query.shape[0], rows)])
    return float(np.mean(inside))


def precision_recall(real_features, fake_features, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    The manifold of a set is the union of balls B(φ_i, r_k(φ_i)), r_k the distance from φ_i to
    its k-th nearest neighbour in the same set (itself excluded). Then

        precision = (1/N_fake) Σ_fake 1[φ_fake ∈ manifold(real)]    (fidelity)
        recall    = (1/N_real) Σ_real 1[φ_real ∈ manifold(fake)]    (coverage)

    Args:
      real_features: (N_real, F); fake_features: (N_fake, F); both N > k.
      k: neighbourhood size (3 as in the paper).

    Returns:
      (precision, recall), each in [0, 1]; both 1 when the two sets are identical.
    """
    k = _check_int_at_least("k", k, 1)
    real = _check_features("real_features", real_features, min_rows=k + 1, why=f"k-NN radii with k={k}")
    fake = _check_features("fake_features", fake_features, min_rows=k + 1, why=f"k-NN radii with k={k}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features must have the same feature dimension, "
                         f"got {real.shape[1]} and {fake.shape[1]}.")
    # Row chunks keep each distance block near 16M float64 entries, whatever N and F.
    rows = max(1, 2**24 // max(real.shape[0], fake.shape[0]))
    precision = _coverage(fake, real, _knn_sq_radii(real, k, rows), rows)
    recall = _coverage(real, fake, _knn_sq_radii(fake, k, rows), rows)
    return precision, recall


# --------------------------------------------------------------------------------------------
# The report.


class QualityReport(NamedTuple):
    """FD (± its bootstrap SE), precision and recall of N generated vs M reference samples."""
    fd: float
    fd_se: float  # NaN when num_bootstrap = 0
    precision: float
    recall: float
    num_samples: int
    num_reference: int

    def __str__(self) -> str:
        se = "" if np.isnan(self.fd_se) else f" ± {self.fd_se:.3f}"
        return (f"FD {self.fd:.3f}{se}, precision {self.precision:.3f}, "
                f"recall {self.recall:.3f} ({self.num_samples} samples vs "
                f"{self.num_reference} reference)")


def quality_from_features(fake_features, real_features, *, num_bootstrap: int, seed: int | None,
                          k: int = 3) -> QualityReport:
    """A ``QualityReport`` from features: fake (N, F) generated, real (M, F) reference; N, M > F.

    ``num_bootstrap`` = 0 skips the bootstrap (fd_se = NaN, and ``seed`` may be None);
    otherwise ``num_bootstrap`` ≥ 2 and ``seed`` is a required int.
    """
    fake, real = _check_pair(fake_features, real_features, "fake_features", "real_features")
    num_bootstrap = _check_int_at_least("num_bootstrap", num_bootstrap, 0)
    if num_bootstrap == 1:
        raise ValueError("num_bootstrap must be 0 (no standard error) or >= 2, got 1.")
    if num_bootstrap and seed is None:
        raise ValueError("seed is required for the bootstrap (num_bootstrap > 0): pass an int.")
    ref = _gaussian("reference covariance", *_statistics(real))
    fd = _frechet(*_statistics(fake), ref)
    fd_se = float("nan")
    if num_bootstrap:
        seed = _check_int_at_least("seed", seed, 0)
        fd_se = float(np.std(_bootstrap(fake, ref, num_bootstrap, seed), ddof=1))
    precision, recall = precision_recall(real, fake, k=k)
    return QualityReport(fd, fd_se, precision, recall, fake.shape[0], real.shape[0])


def _check_images(name: str, images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch of images (N, H, W, C), got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be float images in [-1, 1], got dtype {x.dtype} "
                        f"(map integer levels with diffusion_jax.data.to_model_range).")
    check_finite(name, x)
    return x


def _features_of(name: str, feature_fn: Callable, images: np.ndarray) -> np.ndarray:
    f = np.asarray(feature_fn(images))
    if f.ndim != 2 or f.shape[0] != images.shape[0]:
        raise ValueError(f"feature_fn must return features of shape ({images.shape[0]}, F) for "
                         f"{name} of shape {images.shape}, got {f.shape}.")
    return _as_float64(f"feature_fn({name})", f)


def sample_quality(samples, reference, *, feature_fn: Callable, num_bootstrap: int = 50,
                   seed: int | None, k: int = 3) -> QualityReport:
    """FD, its bootstrap SE, precision and recall of ``samples`` against ``reference`` images.

    Args:
      samples: generated images (N, *image_shape), float, finite (e.g. in [-1, 1]).
      reference: real images (M, *image_shape).
      feature_fn: images (n, *image_shape) -> features (n, F) (``digits_feature_fn()``, or an
        Inception pool3 for FID; see the module docstring). N and M must exceed F.
      num_bootstrap: resamples of ``samples`` for the SE (0: none, fd_se = NaN).
      seed: seed of the bootstrap (required unless num_bootstrap = 0).
      k: the k of the k-NN manifolds of precision/recall.

    Returns:
      ``QualityReport(fd, fd_se, precision, recall, num_samples, num_reference)``.
    """
    samples, reference = _check_images("samples", samples), _check_images("reference", reference)
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples and reference must hold images of the same shape, got "
                         f"{samples.shape[1:]} and {reference.shape[1:]}.")
    if not callable(feature_fn):
        raise TypeError(f"feature_fn must be a function images -> (N, F) features, got {feature_fn!r}.")
    return quality_from_features(_features_of("samples", feature_fn, samples),
                                 _features_of("reference", feature_fn, reference),
                                 num_bootstrap=num_bootstrap, seed=seed, k=k)


# --------------------------------------------------------------------------------------------
# The digits feature network: an MLP written as a pure jnp function of its weights.


def digits_classifier_apply(params: dict, image):
    """One image (8, 8, 1) -> (features (F,), logits (10,)) of the digits feature classifier.

    ``params`` holds ``w0, b0, ..., w{L}, b{L}``: hidden layers h ← SiLU(h w_i + b_i) on the
    flattened image clipped to [−1, 1]; the last hidden activation is the feature vector, and
    logits = features · w_L + b_L. Written for ONE example; ``jax.vmap`` it for a batch.
    """
    num_layers = len(params) // 2
    h = jnp.clip(jnp.reshape(image, (-1,)), -1.0, 1.0)
    for i in range(num_layers - 1):
        h = jax.nn.silu(h @ params[f"w{i}"] + params[f"b{i}"])
    last = num_layers - 1
    return h, h @ params[f"w{last}"] + params[f"b{last}"]


def _stamp(path: str) -> int | None:
    """The file's modification time: part of the cache keys, so a rewritten file is reloaded."""
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: int | None):
    if not os.path.exists(path):
        raise FileNotFoundError(f"digits feature weights {path} are missing; rebuild them with "
                                f"python -m experiments.train_digits_features.")
    with np.load(path) as f:
        params = {k: np.asarray(f[k], np.float32) for k in f.files
                  if k[0] in "wb" and k[1:].isdigit()}
        meta = {k: f[k].item() if f[k].ndim == 0 else f[k].tolist() for k in f.files
                if k not in params}
    return params, meta


def load_digits_classifier(path: str | os.PathLike = DIGITS_FEATURES_PATH):
    """(params, metadata) of the shipped digits feature classifier.

    params: dict of float32 numpy arrays for ``digits_classifier_apply``; metadata: dict with
    e.g. ``feature_dim``, ``test_accuracy``, ``seed``, ``steps``, ``hidden``.
    """
    path = os.fspath(path)
    params, meta = _load(path, _stamp(path))
    return dict(params), dict(meta)


def digits_feature_fn(*, path: str | os.PathLike = DIGITS_FEATURES_PATH, batch_size: int = 1024,
                      logits: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """The feature extractor of FD-digits: images (N, 8, 8, 1) -> features (N, F) float32.

    Penultimate-layer activations (F = 64 for the shipped weights) of the digits classifier;
    inputs are clipped to [−1, 1]. Jitted on fixed batches of ``batch_size`` (the last one
    padded), so any N compiles once. ``logits=True`` returns the logits (N, 10) instead.
    """
    batch_size = _check_int_at_least("batch_size", batch_size, 1)
    if logits is not True and logits is not False:
        raise TypeError(f"logits must be True or False, got {logits!r}.")
    path = os.fspath(path)
    return _digits_feature_fn(path, _stamp(path), batch_size, logits)


@functools.lru_cache(maxsize=8)
def _digits_feature_fn(path: str, stamp: int | None, batch_size: int, logits: bool):
    params = jax.tree.map(jnp.asarray, load_digits_classifier(path)[0])
    last = len(params) // 2 - 1
    which, out_dim = (1, params[f"b{last}"].shape[0]) if logits else (0, params[f"b{last - 1}"].shape[0])
    batched = jax.jit(jax.vmap(lambda x: digits_classifier_apply(params, x)[which]))

    def feature_fn(images) -> np.ndarray:
        x = _check_images("images", images)
        if x.shape[1:] != DIGITS_IMAGE_SHAPE:
            raise ValueError(f"images must have shape (N, 8, 8, 1) (the digits), got {x.shape}.")
        x = x.astype(np.float32)
        n = x.shape[0]
        padded = np.concatenate([x, np.zeros((-n % batch_size, *DIGITS_IMAGE_SHAPE), np.float32)])
        out = [np.asarray(batched(padded[s:s + batch_size]))
               for s in range(0, padded.shape[0], batch_size)]
        return np.concatenate(out)[:n] if out else np.zeros((0, out_dim), np.float32)

    return feature_fn


def fd_digits(samples, *, reference: str = "test", num_bootstrap: int = 50, seed: int | None,
              k: int = 3, path: str | os.PathLike = DIGITS_FEATURES_PATH) -> QualityReport:
    """FD-digits, its bootstrap SE, precision and recall of digit samples vs a digits split.

    Args:
      samples: generated digits (N, 8, 8, 1), float in [−1, 1] (clipped), N > 64.
      reference: "test" (300 images) or "train" (1,497 images) of the embedded digits.
      num_bootstrap, seed, k: as in ``sample_quality``.
      path: the feature classifier's weights (the shipped file by default).

    Returns:
      ``QualityReport``. For scale, against the test split: the train split gives FD 6.8, test
      digits blurred with σ = 0.5 px 29, with noise σ = 0.4 20, shifted by 1 px 518.
    """
    check_choice("reference", reference, ("test", "train"))
    feature_fn = digits_feature_fn(path=path)
    samples = _check_images("samples", samples)
    if samples.shape[1:] != DIGITS_IMAGE_SHAPE:
        raise ValueError(f"samples must have shape (N, 8, 8, 1) (the digits), got {samples.shape}.")
    return sample_quality(samples, full_split("digits", reference), feature_fn=feature_fn,
                          num_bootstrap=num_bootstrap, seed=seed, k=k)
