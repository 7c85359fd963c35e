"""The paper's toy model with ground truth (docs/METHOD.md §4): a generator and its scoring.

Two "models" A and B see sparse combinations of the same *concepts*; a few concepts are
visible to only one of them. Because the concept directions are known, a crosscoder trained
on the pairs can be scored against ground truth: which exclusive concepts did it recover, and
did it call them exclusive?

What the paper fixes (its values are the defaults here): 2,048 concepts as random unit vectors
in 256 dimensions; 2.5% exclusive to each model; sparse, frequency-decaying, rank-10
correlated activations with Uniform(0, 1) magnitudes; noise 0.01; model B sees its concepts
through a random affine map (entries N(0, 0.25), translation N(0, 0.01)), then is rescaled to
A's median norm; a concept is recovered when a decoder vector has cosine > 0.83 with it.

What the paper leaves open, and what we chose (each is a field of :class:`ToyConfig`):

- **How many concepts fire per sample**: ``mean_active`` = 5 in expectation (matching the
  k = 5 the benchmark trains with).
- **Frequency decay**: a power law in a concept's frequency rank r (0-based),
  ``p_r ∝ (r + 1) ** -freq_decay`` with ``freq_decay`` = 0.5, scaled so the probabilities sum
  to ``mean_active`` (the most frequent concept fires in ~5.5% of samples, the rarest in
  ~0.12%: a 45x range, every concept still seen thousands of times in a default run).
- **Correlation (rank 10)**: a Gaussian copula. Each sample draws a latent g ~ N(0, I_10);
  concept c fires when ``sqrt(rho) * L_c . g + sqrt(1 - rho) * eps_c`` exceeds the threshold
  that makes its firing probability exactly p_c, with unit-norm random loadings L_c and
  ``rho = corr_strength`` = 0.5. So frequencies are exactly as specified and co-firing
  follows a rank-10 structure (pairs of concepts have latent correlation ~ ±0.16).
- **Magnitudes**: Uniform(0, 1), independent, for each firing concept.
- **Which concepts are exclusive**: spread evenly over the frequency ranking (one random rank
  in each stratum of n / n_exclusive ranks), so each model's exclusive set has the same
  frequency profile as the shared set and a seed cannot draw only rare ones.
- **B's exclusive concepts** are drawn like every other concept (random unit vectors in the
  common concept space, seen by B through its affine map); **A's activation when a B-only
  concept fires** gets nothing from it (and vice versa). A sample whose only active concepts
  are B-only is pure noise (plus nothing) in A.
- **The affine map**: ``x_B = s_B * (M z_B + t) + noise`` with M (d_b x d_a) entries of
  standard deviation ``map_std`` = 0.25, t entries of standard deviation
  ``translation_std`` = 0.01 (we read the paper's N(0, 0.25) and N(0, 0.01) as standard
  deviations; M's overall scale does not matter since s_B rescales), and s_B set on a fixed
  calibration sample so that the median norm of s_B (M z_B + t) equals that of z_A. Concept
  c's direction in B-space is ``M u_c / |M u_c|``.
- **Noise**: i.i.d. N(0, ``noise_std``²) per coordinate, ``noise_std`` = 0.01, added to
  both models after the rescaling.

Determinism: batch i of stream ``seed`` is a pure function of (world seed, stream seed, i,
batch size), so ``skip`` costs nothing and three crosscoders see the same stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossdiff.errors import CrossdiffError

RECOVERY_COSINE = 0.83
"""docs/METHOD.md §4: a concept is recovered when some decoder vector has cosine above this."""

_CALIBRATION_STREAM = 2**31 - 1
"""Stream seed reserved for the calibration sample (never handed to training)."""


@dataclass
class ToyConfig:
    """The toy world: concepts, how they fire, and how each model sees them."""

    n_concepts: int = 2048
    """Number of ground-truth concepts (paper: 2,048)."""
    d_a: int = 256
    """Width of model A's activations (paper: 256); concepts are unit vectors in this space."""
    d_b: int = 256
    """Width of model B's activations (paper: 256); B sees concepts through an affine map."""
    frac_exclusive_a: float = 0.025
    """Fraction of concepts that only model A represents (paper: 2.5%)."""
    frac_exclusive_b: float = 0.025
    """Fraction of concepts that only model B represents (paper: 2.5%)."""
    mean_active: float = 5.0
    """Expected number of concepts firing per sample (over all concepts)."""
    freq_decay: float = 0.5
    """Power-law exponent of firing probability over frequency rank: p_r ∝ (r + 1)^-decay."""
    max_prob: float = 0.9
    """Cap on any concept's firing probability (only binds for steep decays)."""
    corr_rank: int = 10
    """Rank of the correlation between concepts' firing (paper: 10); 0 = independent."""
    corr_strength: float = 0.5
    """Share of each concept's latent variance that comes from the rank-``corr_rank`` factors."""
    noise_std: float = 0.01
    """Standard deviation of i.i.d. Gaussian noise per coordinate, both models (paper: 0.01)."""
    map_std: float = 0.25
    """Standard deviation of the entries of B's linear map M (paper: N(0, 0.25))."""
    translation_std: float = 0.01
    """Standard deviation of B's translation t (paper: N(0, 0.01))."""
    calibration_samples: int = 16384
    """Samples used to fix B's rescaling and the normalization scales."""
    seed: int = 0
    """Seed of the world: directions, exclusivity, frequencies, loadings, B's map."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_exclusive_a(self) -> int:
        return round(self.frac_exclusive_a * self.n_concepts)

    @property
    def n_exclusive_b(self) -> int:
        return round(self.frac_exclusive_b * self.n_concepts)

    def validate(self) -> None:
        """Raise CrossdiffError naming the bad value and the fix."""
        for name in ("n_concepts", "d_a", "d_b", "calibration_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CrossdiffError(f"toy {name}={value!r} must be a positive integer")
        if not isinstance(self.corr_rank, int) or self.corr_rank < 0:
            raise CrossdiffError(f"toy corr_rank={self.corr_rank!r} must be an integer >= 0")
        for name in ("frac_exclusive_a", "frac_exclusive_b"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise CrossdiffError(f"toy {name}={value!r} must be a fraction in [0, 1)")
        if self.n_exclusive_a + self.n_exclusive_b >= self.n_concepts:
            raise CrossdiffError(
                f"toy exclusive concepts ({self.n_exclusive_a} A-only + {self.n_exclusive_b} "
                f"B-only) leave no shared concept out of n_concepts={self.n_concepts}; lower "
                f"frac_exclusive_a/b"
            )
        if not 0.0 <= self.corr_strength < 1.0:
            raise CrossdiffError(
                f"toy corr_strength={self.corr_strength!r} must be in [0, 1): it is the share "
                f"of each concept's latent variance explained by the shared factors"
            )
        if not 0.0 < self.max_prob <= 1.0:
            raise CrossdiffError(f"toy max_prob={self.max_prob!r} must be in (0, 1]")
        if not 0.0 < self.mean_active <= self.max_prob * self.n_concepts:
            raise CrossdiffError(
                f"toy mean_active={self.mean_active!r} must be in (0, max_prob * n_concepts = "
                f"{self.max_prob * self.n_concepts:g}]"
            )
        if self.freq_decay < 0:
            raise CrossdiffError(f"toy freq_decay={self.freq_decay!r} must be >= 0")
        for name in ("noise_std", "translation_std"):
            if getattr(self, name) < 0:
                raise CrossdiffError(f"toy {name}={getattr(self, name)!r} must be >= 0")
        if not self.map_std > 0:
            raise CrossdiffError(f"toy map_std={self.map_std!r} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stream_seed(*parts: int) -> int:
    """A 63-bit torch seed that is a pure function of ``parts`` (independent streams)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _typical_norm(x: Tensor) -> float:
    """Median row norm; the mean where most rows are zero (very sparse or bunched worlds)."""
    norms = x.norm(dim=1)
    med = float(norms.median())
    return med if med > 0 else float(norms.mean())


def _firing_probabilities(cfg: ToyConfig) -> np.ndarray:
    """Power-law probabilities by frequency rank, summing to ``mean_active``, capped."""
    raw = (np.arange(cfg.n_concepts, dtype=np.float64) + 1.0) ** (-cfg.freq_decay)
    p = raw * (cfg.mean_active / raw.sum())
    # Water-filling under the cap: scale the uncapped part until the total is right again.
    for _ in range(100):
        over = p > cfg.max_prob
        if not over.any():
            break
        p[over] = cfg.max_prob
        free = ~over
        deficit = cfg.mean_active - p.sum()
        p[free] *= 1.0 + deficit / p[free].sum()
    return np.minimum(p, cfg.max_prob)


def _stratified_pick(n_ranks: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct ranks, one drawn uniformly inside each of ``count`` equal strata."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(0, n_ranks, count + 1)
    lo = np.ceil(edges[:-1]).astype(np.int64)
    hi = np.maximum(np.ceil(edges[1:]).astype(np.int64), lo + 1)
    return np.minimum(lo + (rng.random(count) * (hi - lo)).astype(np.int64), n_ranks - 1)


@dataclass
class ToyBatch:
    """One generated batch with its ground truth (raw activations, before normalization)."""

    x_a: Tensor
    """(B, d_a) model A's activations."""
    x_b: Tensor
    """(B, d_b) model B's activations."""
    sample_index: Tensor
    """(nnz,) which sample each active concept belongs to."""
    concept_index: Tensor
    """(nnz,) which concept is active."""
    magnitude: Tensor
    """(nnz,) its magnitude in (0, 1)."""

    def concept_activations(self, n_concepts: int) -> Tensor:
        """Dense (B, n_concepts) ground-truth concept activations."""
        out = torch.zeros(self.x_a.shape[0], n_concepts, device=self.x_a.device)
        out[self.sample_index, self.concept_index] = self.magnitude
        return out


@dataclass
class ToyWorld:
    """The ground truth of one toy world, built deterministically from a :class:`ToyConfig`."""

    config: ToyConfig
    directions_a: Tensor
    """(n_concepts, d_a) unit directions of every concept in A-space (used only where A sees it)."""
    directions_b: Tensor
    """(n_concepts, d_b) unit directions in B-space: M u_c / |M u_c|."""
    kinds: np.ndarray
    """'A' (A-only), 'B' (B-only) or 'S' (shared) per concept."""
    probabilities: Tensor
    """(n_concepts,) marginal firing probability of each concept."""
    loadings: Tensor
    """(n_concepts, corr_rank) unit-norm factor loadings of the copula."""
    thresholds: Tensor
    """(n_concepts,) latent thresholds: P(latent > threshold) = probability."""
    map_b: Tensor
    """(d_b, d_a) B's linear map M (before rescaling)."""
    translation_b: Tensor
    """(d_b,) B's translation t (before rescaling)."""
    scale_b: float = 1.0
    """s_B: makes B's median norm equal A's (set by calibration)."""
    _vis_a: Tensor = field(init=False, repr=False)
    _vis_b: Tensor = field(init=False, repr=False)
    _rows_b: Tensor = field(init=False, repr=False)

    @classmethod
    def build(cls, config: ToyConfig) -> ToyWorld:
        cfg = config
        gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, 0xC0C0))
        rng = np.random.default_rng(_stream_seed(cfg.seed, 0xF00D))
        n = cfg.n_concepts
        u = torch.randn(n, cfg.d_a, generator=gen, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True)
        m = torch.randn(cfg.d_b, cfg.d_a, generator=gen, dtype=torch.float64) * cfg.map_std
        t = torch.randn(cfg.d_b, generator=gen, dtype=torch.float64) * cfg.translation_std
        ub = u @ m.T
        ub = ub / ub.norm(dim=1, keepdim=True)
        rank = max(cfg.corr_rank, 1)
        loadings = torch.randn(n, rank, generator=gen, dtype=torch.float64)
        loadings = loadings / loadings.norm(dim=1, keepdim=True)
        if cfg.corr_rank == 0:
            loadings.zero_()

        # Frequency: concept_at_rank[r] has rank r; each exclusive set is stratified over ranks
        # (B's over the ranks A left), so both span all frequencies.
        p_by_rank = _firing_probabilities(cfg)
        concept_at_rank = rng.permutation(n)
        kinds = np.full(n, "S", dtype="<U1")
        a_ranks = _stratified_pick(n, cfg.n_exclusive_a, rng)
        rest = np.setdiff1d(np.arange(n), a_ranks)  # sorted ranks not taken by A
        b_ranks = rest[_stratified_pick(rest.size, cfg.n_exclusive_b, rng)]
        kinds[concept_at_rank[a_ranks]] = "A"
        kinds[concept_at_rank[b_ranks]] = "B"
        probs = np.empty(n)
        probs[concept_at_rank] = p_by_rank
        p = torch.tensor(probs, dtype=torch.float64)
        thresholds = torch.special.ndtri(1.0 - p)

        world = cls(
            config=cfg,
            directions_a=u.float(),
            directions_b=ub.float(),
            kinds=kinds,
            probabilities=p.float(),
            loadings=loadings.float(),
            thresholds=thresholds.float(),
            map_b=m.float(),
            translation_b=t.float(),
        )
        world._calibrate()
        return world

    def __post_init__(self) -> None:
        self._index()

    @property
    def device(self) -> torch.device:
        return self.directions_a.device

    def to(self, device: str | torch.device) -> ToyWorld:
        """The same world with its tensors on ``device`` (batches are then drawn there: the
        stream is deterministic per device type, not identical across them)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if f.init and isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def _index(self) -> None:
        kinds = self.kinds
        self._vis_a = torch.from_numpy(kinds != "B").to(self.directions_a.device)
        self._vis_b = torch.from_numpy(kinds != "A").to(self.directions_a.device)
        # B's per-concept contribution (before s_B): M u_c
        self._rows_b = (self.map_b.double() @ self.directions_a.double().T).T.float()

    def _calibrate(self) -> None:
        """Fix s_B so that B's median norm (before noise) equals A's."""
        batch = self.sample(self.config.calibration_samples, _CALIBRATION_STREAM, 0, noise=False)
        na = _typical_norm(batch.x_a)
        nb = _typical_norm(batch.x_b)  # generated with scale_b = 1
        if not (na > 0 and nb > 0):
            raise CrossdiffError(
                "toy calibration found only zero activations; raise mean_active so that "
                "samples have active concepts"
            )
        self.scale_b = na / nb

    # ---- ground truth views --------------------------------------------------------------
    def concept_mask(self, kind: str) -> np.ndarray:
        """Boolean mask over concepts of one kind: 'A', 'B' or 'S'."""
        if kind not in ("A", "B", "S"):
            raise CrossdiffError(f"concept kind {kind!r} is not 'A', 'B' or 'S'")
        return self.kinds == kind

    def visible_to(self, m: str) -> np.ndarray:
        """Boolean mask: concepts that model m ('a' or 'b') represents."""
        key = m.lower()
        if key not in ("a", "b"):
            raise CrossdiffError(f"model {m!r} is not 'a' or 'b'")
        return self.kinds != ("B" if key == "a" else "A")

    # ---- sampling ------------------------------------------------------------------------
    def sample(self, batch_size: int, seed: int, index: int, *, noise: bool = True) -> ToyBatch:
        """Batch ``index`` of stream ``seed``: a pure function of (world, seed, index, size)."""
        codes = self.draw_codes(batch_size, seed, index)
        return self.render(codes, batch_size, seed, index, noise=noise)

    def draw_codes(self, batch_size: int, seed: int, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Which concepts fire in batch ``index`` of stream ``seed``, and how strongly.

        Returns (sample_index, concept_index, magnitude). This is the costly part of a batch
        (a latent per sample and concept), so :class:`ToySource` can cache it.
        """
        cfg = self.config
        dev = self.device
        gen = torch.Generator(dev).manual_seed(_stream_seed(cfg.seed, seed, index, batch_size, 1))
        eps = torch.randn(batch_size, cfg.n_concepts, generator=gen, device=dev)
        if cfg.corr_rank > 0 and cfg.corr_strength > 0:
            g = torch.randn(batch_size, cfg.corr_rank, generator=gen, device=dev)
            latent = torch.addmm(
                eps.mul_(math.sqrt(1.0 - cfg.corr_strength)),
                g,
                self.loadings.T,
                alpha=math.sqrt(cfg.corr_strength),
            )
        else:
            latent = eps
        sample_index, concept_index = (latent > self.thresholds).nonzero(as_tuple=True)
        magnitude = torch.rand(sample_index.shape[0], generator=gen, device=dev)
        return sample_index, concept_index, magnitude

    def render(
        self,
        codes: tuple[Tensor, Tensor, Tensor],
        batch_size: int,
        seed: int,
        index: int,
        *,
        noise: bool = True,
    ) -> ToyBatch:
        """Both models' activations for given concept codes (noise from its own stream)."""
        cfg = self.config
        sample_index, concept_index, magnitude = codes
        dev = self.device
        x_a = torch.zeros(batch_size, cfg.d_a, device=dev)
        x_b = torch.zeros(batch_size, cfg.d_b, device=dev)
        in_a = self._vis_a[concept_index]
        in_b = self._vis_b[concept_index]
        x_a.index_add_(
            0,
            sample_index[in_a],
            self.directions_a[concept_index[in_a]] * magnitude[in_a, None],
        )
        x_b.index_add_(
            0,
            sample_index[in_b],
            self._rows_b[concept_index[in_b]] * magnitude[in_b, None],
        )
        x_b.add_(self.translation_b).mul_(self.scale_b)
        if noise and cfg.noise_std > 0:
            gen = torch.Generator(dev).manual_seed(
                _stream_seed(cfg.seed, seed, index, batch_size, 2)
            )
            x_a.add_(
                torch.randn(batch_size, cfg.d_a, generator=gen, device=dev), alpha=cfg.noise_std
            )
            x_b.add_(
                torch.randn(batch_size, cfg.d_b, generator=gen, device=dev), alpha=cfg.noise_std
            )
        return ToyBatch(x_a, x_b, sample_index, concept_index, magnitude)


class ToySource:
    """A :class:`crossdiff.PairSource` over a toy world: infinite, deterministic, O(1) skip.

    ``device`` is where batches are drawn (a GPU draws them ~50x faster; the stream is then
    a different, equally distributed one). ``cache_mb`` keeps each batch's concept codes.

    >>> src = ToySource(ToyConfig(n_concepts=64, d_a=16, d_b=12, calibration_samples=512))
    >>> x_a, x_b = next(src.batches(8, seed=1))
    >>> tuple(x_a.shape), tuple(x_b.shape)
    ((8, 16), (8, 12))
    """

    def __init__(
        self,
        config: ToyConfig | None = None,
        world: ToyWorld | None = None,
        *,
        cache_mb: float = 0.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if world is None:
            world = ToyWorld.build(config or ToyConfig())
        elif config is not None and config != world.config:
            raise CrossdiffError("ToySource got both a config and a world built from another one")
        self._calibration_world = world.to("cpu")
        self.world = world.to(device)
        self.config = world.config
        self.d_a = world.config.d_a
        self.d_b = world.config.d_b
        self._scales: tuple[float, float] | None = None
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[tuple[int, int, int], tuple[Tensor, Tensor, Tensor]] = {}
        self._cached_bytes = 0

    def sample(self, batch_size: int, seed: int, index: int) -> ToyBatch:
        """Batch ``index`` of stream ``seed`` with its ground truth, using the code cache.

        With ``cache_mb > 0`` the firing codes (not the dense activations) of each batch are
        kept, so a second crosscoder trained on the same stream pays only the cheap rendering.
        """
        key = (seed, index, batch_size)
        codes = self._cache.get(key)
        if codes is None:
            codes = self.world.draw_codes(batch_size, seed, index)
            size = sum(t.numel() for t in codes) * 4
            if self._cached_bytes + size <= self.cache_bytes:
                rows, concepts, mags = codes
                self._cache[key] = (rows.int(), concepts.int(), mags)
                self._cached_bytes += size
        else:
            codes = (codes[0].long(), codes[1].long(), codes[2])
        return self.world.render(codes, batch_size, seed, index)

    def batches(
        self, batch_size: int, *, seed: int = 0, skip: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite raw batches; batch i depends only on (world, seed, i, batch_size)."""
        if batch_size <= 0:
            raise CrossdiffError(f"batch_size={batch_size} must be positive")
        if skip < 0:
            raise CrossdiffError(f"skip={skip} must be >= 0")
        if seed == _CALIBRATION_STREAM:
            raise CrossdiffError(f"stream seed {seed} is reserved for calibration; pick another")
        i = skip
        while True:
            batch = self.sample(batch_size, seed, i)
            yield batch.x_a, batch.x_b
            i += 1

    def norm_scales(self) -> tuple[float, float]:
        """Scales that bring each model's median norm to sqrt((d_a + d_b) / 2).

        The paper's rule, docs/METHOD.md §2."""
        if self._scales is None:
            cfg = self.config
            # on the CPU copy, so the scales do not depend on where batches are drawn
            batch = self._calibration_world.sample(cfg.calibration_samples, _CALIBRATION_STREAM, 1)
            target = math.sqrt((cfg.d_a + cfg.d_b) / 2)
            self._scales = (target / _typical_norm(batch.x_a), target / _typical_norm(batch.x_b))
        return self._scales


# ---- scoring against ground truth --------------------------------------------------------------
@dataclass
class ToyScore:
    """How well a dictionary recovered a toy world's concepts, and whether it labelled them right.

    Definitions (``tau`` = the recovery cosine, 0.83; only *alive* features count):

    - ``recall_exclusive_a``: fraction of A-only concepts c for which some alive feature
      *labelled* A-exclusive has cos(A-decoder row, c's A-direction) > tau. Likewise for B.
    - ``recall_shared``: fraction of shared concepts for which one alive feature labelled
      shared matches c in *both* models (A-row vs A-direction and B-row vs B-direction).
    - ``false_positive_a``: among alive features labelled A-exclusive, the fraction whose
      A-decoder row matches no A-only concept (it learned a shared concept, split one, or
      nothing recognisable). ``false_positive`` pools both models' exclusive-labelled features.
    - ``recall_any_a``: A-only concepts matched by *any* alive feature's A-decoder row,
      whatever its label: separates "not learned" from "learned but labelled shared".
    - ``recall_exclusive_a_frequent``: the same as ``recall_exclusive_a`` over the A-only
      concepts whose frequency rank is below F. A dictionary smaller than the number of
      concepts cannot hold the rarer ones (shared features win the space), so with exclusive
      concepts spread over all frequencies, ``recall_exclusive_a`` ~ F / n_concepts is a
      practical ceiling and this number says how close to it a crosscoder came.
    """

    recall_exclusive_a: float
    recall_exclusive_b: float
    recall_shared: float
    false_positive_a: float
    false_positive_b: float
    false_positive: float
    labelled_a: int
    """Alive features labelled A-exclusive."""
    labelled_b: int
    true_a: int
    """Of those, how many match an A-only concept."""
    true_b: int
    false_matching_shared_a: int
    """Of the false A-labelled ones, how many match a shared concept in A."""
    false_matching_shared_b: int
    recall_any_a: float
    recall_any_b: float
    recall_exclusive_a_frequent: float
    """``recall_exclusive_a`` restricted to A-only concepts among the F most frequent concepts
    (F = dictionary size): the ones a dictionary of this size has room for."""
    recall_exclusive_b_frequent: float
    alive: int
    n_features: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unit_rows(w: Tensor) -> Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def relative_norm_labels(
    dec_a: Tensor, dec_b: Tensor, *, hi: float = 0.8, lo: float = 0.2
) -> np.ndarray:
    """Label features by relative decoder norm R = |d_A| / (|d_A| + |d_B|) (docs/METHOD.md §3).

    R > ``hi`` -> 'A', R < ``lo`` -> 'B', else 'S'. The paper's toy thresholds are 0.8/0.2,
    real models 0.9/0.1.
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise CrossdiffError(f"relative norm thresholds lo={lo}, hi={hi}: need 0 <= lo < hi <= 1")
    na = dec_a.detach().float().cpu().norm(dim=1)
    nb = dec_b.detach().float().cpu().norm(dim=1)
    r = (na / (na + nb).clamp_min(1e-12)).numpy()
    out = np.full(r.shape[0], "S", dtype="<U1")
    out[r > hi] = "A"
    out[r < lo] = "B"
    return out


def score_decoders(
    world: ToyWorld,
    dec_a: Tensor,
    dec_b: Tensor,
    labels: np.ndarray,
    *,
    alive: np.ndarray | None = None,
    threshold: float = RECOVERY_COSINE,
) -> ToyScore:
    """Score decoder rows (F, d_a) and (F, d_b) with per-feature labels against ground truth.

    ``labels`` holds 'A', 'B' or 'S' per feature (see :func:`crosscoder_labels`); ``alive``
    (bool per feature, default all) restricts every count to features that fire.
    """
    n_feat = dec_a.shape[0]
    if dec_b.shape[0] != n_feat or len(labels) != n_feat:
        raise CrossdiffError(
            f"decoder rows disagree: {dec_a.shape[0]} (A), {dec_b.shape[0]} (B), "
            f"{len(labels)} labels"
        )
    if dec_a.shape[1] != world.config.d_a or dec_b.shape[1] != world.config.d_b:
        raise CrossdiffError(
            f"decoder widths {dec_a.shape[1]}/{dec_b.shape[1]} do not match the toy world's "
            f"d_a={world.config.d_a}/d_b={world.config.d_b}"
        )
    labels = np.asarray(labels)
    alive_t = torch.ones(n_feat, dtype=torch.bool)
    if alive is not None:
        alive_t = torch.as_tensor(np.asarray(alive, dtype=bool))
    cos_a = _unit_rows(dec_a) @ world.directions_a.cpu().T  # (F, n_concepts)
    cos_b = _unit_rows(dec_b) @ world.directions_b.cpu().T
    hit_a = (cos_a > threshold) & alive_t[:, None]
    hit_b = (cos_b > threshold) & alive_t[:, None]
    lab = {k: torch.from_numpy(labels == k) for k in ("A", "B", "S")}
    kind = {k: torch.from_numpy(world.kinds == k) for k in ("A", "B", "S")}

    def frac(mask: Tensor, of: Tensor) -> float:
        total = int(of.sum())
        return float((mask & of).sum()) / total if total else float("nan")

    # recall: concepts matched by a correctly labelled feature
    rec_a = hit_a[lab["A"]].any(0)
    rec_b = hit_b[lab["B"]].any(0)
    rec_s = (hit_a & hit_b)[lab["S"]].any(0)
    any_a = hit_a.any(0)
    any_b = hit_b.any(0)
    rank = torch.argsort(torch.argsort(world.probabilities.cpu(), descending=True))
    frequent = rank < n_feat

    def false_counts(m: str, hit: Tensor) -> tuple[int, int, int]:
        feats = lab[m] & alive_t
        true = hit[:, kind[m]].any(1) & feats
        matches_shared = hit[:, kind["S"]].any(1) & feats & ~true
        return int(feats.sum()), int(true.sum()), int(matches_shared.sum())

    la, ta, sa = false_counts("A", hit_a)
    lb, tb, sb = false_counts("B", hit_b)

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return ToyScore(
        recall_exclusive_a=frac(rec_a, kind["A"]),
        recall_exclusive_b=frac(rec_b, kind["B"]),
        recall_shared=frac(rec_s, kind["S"]),
        false_positive_a=ratio(la - ta, la),
        false_positive_b=ratio(lb - tb, lb),
        false_positive=ratio(la - ta + lb - tb, la + lb),
        labelled_a=la,
        labelled_b=lb,
        true_a=ta,
        true_b=tb,
        false_matching_shared_a=sa,
        false_matching_shared_b=sb,
        recall_any_a=frac(any_a, kind["A"]),
        recall_any_b=frac(any_b, kind["B"]),
        recall_exclusive_a_frequent=frac(rec_a, kind["A"] & frequent),
        recall_exclusive_b_frequent=frac(rec_b, kind["B"] & frequent),
        alive=int(alive_t.sum()),
        n_features=n_feat,
    )


def crosscoder_labels(cc: Any, *, hi: float = 0.8, lo: float = 0.2) -> np.ndarray:
    """'A'/'B'/'S' per feature of a crossdiff ``Crosscoder``.

    A crosscoder with exclusive partitions (DFC) is labelled by its partition: that is what
    the DFC claims. One without (standard, DSF) is labelled by relative decoder norm
    (``hi``/``lo``), except that designated shared features (tied decoders) are always 'S'.
    """
    part = cc.partition
    if part.n_a or part.n_b:
        return part.labels()
    labels = relative_norm_labels(cc.decoder_weight("a"), cc.decoder_weight("b"), hi=hi, lo=lo)
    labels[part.designated.start : part.designated.stop] = "S"
    return labels


@torch.no_grad()
def firing_counts(
    cc: Any, source: ToySource, *, n_batches: int, batch_size: int, seed: int
) -> np.ndarray:
    """How often each feature fires (inference mode) on ``n_batches`` held-out batches."""
    was_training = cc.training
    cc.eval()
    device = next(cc.parameters()).device
    counts = torch.zeros(cc.config.n_features, dtype=torch.long)
    try:
        for x_a, x_b in itertools.islice(source.batches(batch_size, seed=seed), n_batches):
            xa = cc.normalize(x_a.to(device), "a")
            xb = cc.normalize(x_b.to(device), "b")
            f = cc.encode(xa, xb)
            counts += (f > 0).sum(0).cpu()
    finally:
        cc.train(was_training)
    return counts.numpy()


def score_crosscoder(
    cc: Any,
    source: ToySource,
    *,
    n_batches: int = 16,
    batch_size: int = 2048,
    eval_seed: int = 1_000_003,
    threshold: float = RECOVERY_COSINE,
    rel_hi: float = 0.8,
    rel_lo: float = 0.2,
) -> ToyScore:
    """Score a trained crosscoder on a toy source: labels from :func:`crosscoder_labels`,
    alive = fired at least once on ``n_batches`` held-out batches (stream ``eval_seed``)."""
    alive = firing_counts(cc, source, n_batches=n_batches, batch_size=batch_size, seed=eval_seed)
    labels = crosscoder_labels(cc, hi=rel_hi, lo=rel_lo)
    return score_decoders(
        source.world,
        cc.decoder_weight("a"),
        cc.decoder_weight("b"),
        labels,
        alive=alive > 0,
        threshold=threshold,
    )
