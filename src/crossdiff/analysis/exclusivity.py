"""Is an "exclusive" feature really exclusive? Measure whether the other model predicts it.

The published method labels features exclusive by construction (DFC partitions) or by relative
decoder norm (standard crosscoders), and its known weakness is false positives: features
labelled exclusive to A whose concept model B represents too (77% on the toy benchmark
with the paper's init: BENCHMARKS.md).
Two checks, both beyond the published method:

**Cross-model prediction (both crosscoder kinds).** Fit, on held-out aligned pairs, a ridge
map from each model's activations to the other's (the linear "stitching" map of docs/METHOD.md §5;
one ridge solve with ``d_A`` targets, which is the same as a ridge probe for every encoder
direction at once). For a feature labelled A-exclusive, replace the A-part of its
pre-activation by the map's prediction from B,

    pre_hat = T_BA(x_B) . w_A + x_B . w_B + b      (w_B = 0 for DFC A-exclusive features),

pass it through the feature's own firing rule (its BatchTopK threshold), and score the
prediction against the feature's actual activation on *further* held-out pairs:
``cross_r2 = 1 - SSE / SST``. If B carries the concept, the map carries the feature's direction
over and ``cross_r2`` is high; for a concept only A has, B's prediction stays below the
threshold and ``cross_r2`` is about 0. Predicting the *pre-activation* and reusing the
feature's nonlinearity matters: a linear probe on the sparse activation itself is swamped by
interference from the thousands of other concepts in superposition (``crossdiff bench
analysis`` measures both).

**Latent scaling (standard crosscoders; Minder et al. 2025).** For feature j, fit the scalar
beta_m that best reconstructs model m's activation from j's decoder direction u_m (unit) given
j's activation f: beta_m = sum_i f_i u_m.(x_m - x_hat_m + f_i d_m) / sum_i f_i^2 (what is
left for j to explain: the reconstruction error plus j's own contribution). The ratio
``beta_other / beta_own`` near 0 says the other model really has nothing along j's direction
when j fires; near 1, the low decoder norm was a sparsity artifact. Cross-architecture, each
model's direction is the crosscoder's own decoder row for that model (the residual spaces
differ, so one direction cannot serve both as in the same-architecture original).

**Output check (DFC, shared basis).** A DFC exclusive feature has no decoder row in the other
model, but when both models share one residual basis (a model and its own fine-tune:
:func:`same_residual_basis`) the other model can be read along the feature's own direction:
``beta_other / beta_own`` near 0 says the other model does not carry what the feature writes
when it fires. Cross-model prediction and this ratio answer different questions: the first
whether the other model sees *when* the feature fires, the second whether it has what the
feature *does*. A behaviour that a fine-tune conditioned on a concept both models see
(praise for one brand) is predicted by the first and absent by the second; ranking.py gives it
the verdict 'conditional'.

**Output check through the map (DFC, any pair; ``AnalysisConfig.mapped_output``).** Across
architectures there is no common basis, so the other model's activations are mapped into the
feature's model first (the check's own ridge map, out of fold) and read along the feature's
own direction there (:meth:`CrossPredictionScorer.output_betas`). A map fitted on the audit's
prompts learns the behaviour itself; fitted on general text (``map_sources``) it does not.

Everything is streamed: moments are float64 (d x d), the scoring keeps per-feature sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crossdiff.analysis.encoding import encode_batch
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.ridge import ridge_solve


class CrossMoments:
    """Streaming means and (cross-)covariances of both models' activations, in float64.

    Rows are shifted by the first batch's mean before accumulating, which keeps the
    subtraction ``E[xx'] - mu mu'`` from cancelling when the mean is large.
    """

    def __init__(self, d_a: int, d_b: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.d_a, self.d_b = d_a, d_b
        self.device = torch.device(device)
        self.shift_a: torch.Tensor | None = None
        self.shift_b: torch.Tensor | None = None
        kw = {"dtype": torch.float64, "device": self.device}
        self.sum_a = torch.zeros(d_a, **kw)
        self.sum_b = torch.zeros(d_b, **kw)
        self.g_aa = torch.zeros(d_a, d_a, **kw)
        self.g_bb = torch.zeros(d_b, d_b, **kw)
        self.g_ba = torch.zeros(d_b, d_a, **kw)

    def share_shift(self, other: CrossMoments) -> None:
        """Use ``other``'s shift (set by its first batch), so the two can be subtracted."""
        self.shift_a, self.shift_b = other.shift_a, other.shift_b

    def minus(self, other: CrossMoments) -> CrossMoments:
        """The moments of this one's rows without ``other``'s (same shift required): the
        complement of a fold, for cross-fitting."""
        if other.n and (other.shift_a is not self.shift_a or other.shift_b is not self.shift_b):
            raise ValueError("CrossMoments.minus needs moments with the same shift")
        out = CrossMoments(self.d_a, self.d_b, self.device)
        out.share_shift(self)
        out.n = self.n - other.n
        for name in ("sum_a", "sum_b", "g_aa", "g_bb", "g_ba"):
            setattr(out, name, getattr(self, name) - getattr(other, name))
        return out

    def update(self, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        if x_a.shape[0] == 0:
            return
        if self.shift_a is None:
            self.shift_a = x_a.float().mean(0)
            self.shift_b = x_b.float().mean(0)
        a = x_a.float() - self.shift_a
        b = x_b.float() - self.shift_b
        self.n += a.shape[0]
        self.sum_a += a.sum(0).double()
        self.sum_b += b.sum(0).double()
        # float32 products per batch, float64 across batches (fast and accurate enough)
        self.g_aa += (a.T @ a).double()
        self.g_bb += (b.T @ b).double()
        self.g_ba += (b.T @ a).double()


@dataclass
class StitchMaps:
    """Ridge maps between the models (normalized space): x_a ~ x_b @ t_ba + c_ba, and back."""

    t_ba: torch.Tensor  # (d_b, d_a)
    c_ba: torch.Tensor  # (d_a,)
    t_ab: torch.Tensor  # (d_a, d_b)
    c_ab: torch.Tensor  # (d_b,)
    fve_ba: float  # in-sample fraction of A's variance the map from B explains
    fve_ab: float
    n_rows: int
    ridge_ba: float  # the absolute penalties used
    ridge_ab: float


def _ridge(
    g_xx: torch.Tensor, g_xy: torch.Tensor, g_yy_trace: float, n: int, rel: float
) -> tuple[torch.Tensor, float, float]:
    """Solve (C_xx + lam I) T = C_xy for centered covariances; return T, lam, in-sample FVE."""
    t, lam = ridge_solve(g_xx, g_xy, rel)
    # in-sample residual sum of squares: tr(C_yy) - 2 tr(T' C_xy) + tr(T' C_xx T)
    sse = g_yy_trace - 2.0 * float((t * g_xy).sum()) + float((t * (g_xx @ t)).sum())
    fve = 1.0 - sse / g_yy_trace if g_yy_trace > 0 else float("nan")
    return t, lam / max(n, 1), fve


def fit_stitch_maps(moments: CrossMoments, ridge: float) -> StitchMaps:
    """Ridge regression each way from the accumulated moments (``ridge`` relative to the mean
    per-dimension variance of the predicting model)."""
    n = moments.n
    if n < 2 or moments.shift_a is None or moments.shift_b is None:
        raise ValueError("the cross-model map needs at least 2 rows")
    mu_a = moments.sum_a / n
    mu_b = moments.sum_b / n
    c_aa = moments.g_aa - n * torch.outer(mu_a, mu_a)
    c_bb = moments.g_bb - n * torch.outer(mu_b, mu_b)
    c_ba = moments.g_ba - n * torch.outer(mu_b, mu_a)
    t_ba, lam_ba, fve_ba = _ridge(c_bb, c_ba, float(torch.diagonal(c_aa).sum()), n, ridge)
    t_ab, lam_ab, fve_ab = _ridge(c_aa, c_ba.T, float(torch.diagonal(c_bb).sum()), n, ridge)
    mean_a = mu_a + moments.shift_a.double()
    mean_b = mu_b + moments.shift_b.double()
    # x_a_hat = (x_b - mean_b) @ t_ba + mean_a
    c_ba_vec = mean_a - mean_b @ t_ba
    c_ab_vec = mean_b - mean_a @ t_ab
    return StitchMaps(
        t_ba.float(),
        c_ba_vec.float(),
        t_ab.float(),
        c_ab_vec.float(),
        fve_ba,
        fve_ab,
        n,
        lam_ba,
        lam_ab,
    )


def decoder_rows(cc: Crosscoder, m: str, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(feats), d_m) unit decoder rows of model m for these features (zero where a
    feature does not write m) and their norms."""
    local = (cc.local_a if m == "a" else cc.local_b)[feats]
    full = cc._full_dec(m).detach().float()
    rows = full.new_zeros(len(feats), full.shape[1])
    ok = local >= 0
    rows[ok] = full[local[ok]]
    norm = rows.norm(dim=1)
    return rows / norm.clamp_min(1e-12)[:, None], norm


def encoder_columns(cc: Crosscoder, m: str, feats: torch.Tensor) -> torch.Tensor:
    """(d_m, len(feats)) encoder columns of model m for these features (zero where the feature
    does not read m), without materializing the full (d_m, F) matrix."""
    local = (cc.local_a if m == "a" else cc.local_b)[feats]
    enc = cc.W_enc_a if m == "a" else cc.W_enc_b
    out = enc.new_zeros(enc.shape[0], len(feats))
    ok = local >= 0
    out[:, ok] = enc[:, local[ok]]
    return out.detach().float()


class CrossPredictionScorer:
    """Held-out R^2 of each candidate's activation predicted from the other model alone.

    ``side[i]`` is the model whose part of feature ``feats[i]``'s pre-activation is replaced
    by the prediction from the other model ('a': predict from B; 'b': predict from A).
    """

    def __init__(
        self,
        cc: Crosscoder,
        maps: StitchMaps,
        feats: torch.Tensor,
        side: list[str],
        thresholds: torch.Tensor,
        *,
        output: bool = False,
    ) -> None:
        """``output``: also measure the mapped output check (:meth:`output_betas`)."""
        self.cc = cc
        self.output = output
        dev = cc.b_enc.device
        self.feats = feats.to(dev)
        side_t = torch.tensor([s == "a" for s in side], dtype=torch.bool, device=dev)
        self.n_cand = len(feats)
        self.col_of = torch.full((cc.config.n_features,), -1, dtype=torch.long, device=dev)
        self.col_of[self.feats] = torch.arange(self.n_cand, device=dev)
        self.groups: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        b_enc = cc.b_enc.detach().float()
        with torch.no_grad():
            for m, mask in (("a", side_t), ("b", ~side_t)):
                cols = torch.nonzero(mask, as_tuple=True)[0]
                if cols.numel() == 0:
                    continue
                f = self.feats[cols]
                w_a = encoder_columns(cc, "a", f)
                w_b = encoder_columns(cc, "b", f)
                if m == "a":  # x_a replaced by x_b @ t_ba + c_ba: everything reads x_b
                    v = maps.t_ba.to(dev) @ w_a + w_b
                    v0 = maps.c_ba.to(dev) @ w_a + b_enc[f]
                else:
                    v = maps.t_ab.to(dev) @ w_b + w_a
                    v0 = maps.c_ab.to(dev) @ w_b + b_enc[f]
                self.groups.append((m, cols, v, v0))
        # the mapped output check: per group, the own model's unit decoder rows and the map
        # from the other model into the own model's space
        self.out_groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.dec_norm = torch.zeros(self.n_cand, device=dev)
        if output:
            for m, cols, _v, _v0 in self.groups:
                u, norm = decoder_rows(cc, m, self.feats[cols])
                self.dec_norm[cols] = norm
                t, c = (maps.t_ba, maps.c_ba) if m == "a" else (maps.t_ab, maps.c_ab)
                self.out_groups.append((u.T.contiguous(), t.to(dev), c.to(dev)))
        self.thr = thresholds.to(dev)[self.feats]
        kw = {"dtype": torch.float64, "device": dev}
        self.n = 0
        self.sum_f = torch.zeros(self.n_cand, **kw)
        self.sum_f2 = torch.zeros(self.n_cand, **kw)
        self.sse = torch.zeros(self.n_cand, **kw)
        self.active = torch.zeros(self.n_cand, dtype=torch.int64, device=dev)
        # tokenization regression (module tokenization.py): normal equations of each
        # feature's activation on [1, descriptors] and on [1, descriptors, prediction]
        self.zz: torch.Tensor | None = None  # (D+1, D+1), common to every candidate
        self.pz: torch.Tensor | None = None  # (n_cand, D+1) prediction x design
        self.yz: torch.Tensor | None = None  # (n_cand, D+1) activation x design
        self.pp = torch.zeros(self.n_cand, **kw)
        self.yp = torch.zeros(self.n_cand, **kw)
        self.out_own = torch.zeros(self.n_cand, **kw)  # sum f u.(x_own - x_hat_own)
        self.out_map = torch.zeros(self.n_cand, **kw)  # sum f u.(T(x_other) - x_hat_own)

    @torch.no_grad()
    def update(self, x_a: torch.Tensor, x_b: torch.Tensor, z: torch.Tensor | None = None) -> None:
        """Fold in a batch of normalized test rows (and, optionally, their (n, D) tokenization
        descriptors for the tokenization regression)."""
        if x_a.shape[0] == 0 or self.n_cand == 0:
            return
        enc = encode_batch(self.cc, x_a, x_b, recon=self.output)
        col = self.col_of[enc.feats]
        keep = col >= 0
        actual = torch.zeros(x_a.shape[0], self.n_cand, device=x_a.device)
        actual[enc.rows[keep], col[keep]] = enc.vals[keep].float()
        pred = torch.zeros_like(actual)
        for m, cols, v, v0 in self.groups:
            x = x_b if m == "a" else x_a
            pre = x.float() @ v + v0
            thr = self.thr[cols]
            pred[:, cols] = torch.where(pre > thr, pre, torch.zeros_like(pre))
        if self.output:
            self._update_output(x_a, x_b, actual, enc)
        self.n += x_a.shape[0]
        a64 = actual.double()
        self.sum_f += a64.sum(0)
        self.sum_f2 += a64.pow(2).sum(0)
        self.sse += (a64 - pred.double()).pow(2).sum(0)
        self.active += (actual > 0).sum(0)
        if z is not None:
            z1 = torch.cat([torch.ones(z.shape[0], 1, device=z.device), z.float()], 1).double()
            p64 = pred.double()
            if self.zz is None:
                self.zz = torch.zeros(z1.shape[1], z1.shape[1], **_kw(z1))
                self.pz = torch.zeros(self.n_cand, z1.shape[1], **_kw(z1))
                self.yz = torch.zeros(self.n_cand, z1.shape[1], **_kw(z1))
            self.zz += z1.T @ z1
            self.pz += p64.T @ z1
            self.yz += a64.T @ z1
            self.pp += p64.pow(2).sum(0)
            self.yp += (a64 * p64).sum(0)

    def _update_output(
        self, x_a: torch.Tensor, x_b: torch.Tensor, actual: torch.Tensor, enc: Any
    ) -> None:
        """The mapped output check's sums for one batch: along each candidate's own unit
        decoder u, what its own model has left for it (x - x_hat) and what the other model's
        activations, mapped into the own space, have (T(x_other) - x_hat)."""
        for (m, cols, _v, _v0), (u, t, c) in zip(self.groups, self.out_groups):
            own, other = (x_a, x_b) if m == "a" else (x_b, x_a)
            recon = enc.recon_a if m == "a" else enc.recon_b
            act = actual[:, cols].double()
            p_own = (own.float() - recon) @ u
            p_map = (other.float() @ t + c - recon) @ u
            self.out_own[cols] += (act * p_own.double()).sum(0)
            self.out_map[cols] += (act * p_map.double()).sum(0)

    def output_betas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta_own, beta_mapped) per scored feature: the latent-scaling betas (LatentScaling)
        of the feature's own decoder direction in its own model and in the other model's
        activations mapped into the own model's space (NaN where it never fired or the
        check was built without ``output``). Their ratio is the output check across
        architectures: near 0, the other model does not carry what the feature writes."""
        nan = torch.full((self.n_cand,), float("nan"), dtype=torch.float64, device=self.sse.device)
        if not self.output:
            return nan, nan
        f2 = self.sum_f2
        norm = self.dec_norm.double()
        ok = f2 > 0
        own = torch.where(ok, (self.out_own + norm * f2) / f2.clamp_min(1e-30), nan)
        mapped = torch.where(ok, (self.out_map + norm * f2) / f2.clamp_min(1e-30), nan)
        return own, mapped

    def merge(self, other: CrossPredictionScorer) -> None:
        """Add another scorer's sums (the same candidates; another fold's rows)."""
        for name in ("sum_f", "sum_f2", "sse", "active", "pp", "yp", "out_own", "out_map"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.n += other.n
        if other.zz is not None:
            if self.zz is None:
                self.zz, self.pz, self.yz = other.zz.clone(), other.pz.clone(), other.yz.clone()
            else:
                self.zz += other.zz
                self.pz += other.pz
                self.yz += other.yz

    def tokenization_r2(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tok_r2, cross_tok_r2) per candidate: in-sample R^2 of the activation on the
        tokenization descriptors alone, and on the descriptors plus the other model's
        (out-of-fold) prediction. NaN where unknown. With a handful of regressors over
        thousands of rows, in-sample optimism is negligible."""
        nan = torch.full((self.n_cand,), float("nan"), dtype=torch.float64, device=self.pp.device)
        if self.zz is None:
            return nan, nan
        sst = self.sum_f2 - self.sum_f.pow(2) / max(self.n, 1)
        d = self.zz.shape[0]
        eye = torch.eye(d + 1, dtype=torch.float64, device=self.zz.device) * 1e-9
        tok, full = nan.clone(), nan.clone()
        for i in range(self.n_cand):
            if not sst[i] > 0:
                continue
            beta = torch.linalg.lstsq(self.zz + eye[:d, :d], self.yz[i : i + 1].T).solution
            sse_tok = self.sum_f2[i] - float(self.yz[i] @ beta[:, 0])
            g = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=self.zz.device)
            g[:d, :d] = self.zz
            g[:d, d] = self.pz[i]
            g[d, :d] = self.pz[i]
            g[d, d] = self.pp[i]
            b = torch.cat([self.yz[i], self.yp[i : i + 1]])
            beta2 = torch.linalg.lstsq(g + eye, b[:, None]).solution
            sse_full = self.sum_f2[i] - float(b @ beta2[:, 0])
            tok[i] = 1.0 - sse_tok / sst[i]
            full[i] = 1.0 - sse_full / sst[i]
        return tok.clamp(min=-1.0, max=1.0), full.clamp(min=-1.0, max=1.0)

    def r2(self) -> torch.Tensor:
        """(n_cand,) held-out R^2 (NaN where the feature never fired in the test rows)."""
        sst = self.sum_f2 - self.sum_f.pow(2) / max(self.n, 1)
        out = 1.0 - self.sse / sst.clamp_min(1e-30)
        return torch.where(sst > 0, out, torch.full_like(out, float("nan")))


def _kw(t: torch.Tensor) -> dict:
    return {"dtype": torch.float64, "device": t.device}


def same_tokenization(manifest: Any) -> bool:
    """Whether a store's two models tokenize alike: the same tokenizer definition, or the same
    vocabulary size and, in every shard, the same number of content tokens for both models
    (what one tokenizer gives; two different ones almost never agree over a whole store). The
    second test matters for fine-tunes: a saved tokenizer can carry runtime padding or
    truncation settings that change its recorded hash, not its tokens."""
    a, b = manifest.model_a.tokenizer, manifest.model_b.tokenizer
    if a.hash == b.hash:
        return True
    shards = manifest.shards
    return (
        a.vocab_size == b.vocab_size
        and bool(shards)
        and all(s.content_tokens_a == s.content_tokens_b for s in shards)
    )


def same_residual_basis(manifest: Any) -> bool:
    """Whether a store's two models share one residual basis: the same tokenization, width,
    depth and layer, as a model and its own fine-tune or update have (fine-tuning moves
    weights, not the basis). Then a direction of one model can be read in the other as it is."""
    a, b = manifest.model_a, manifest.model_b
    return (
        a.d_model == b.d_model
        and a.n_layers == b.n_layers
        and a.layer == b.layer
        and same_tokenization(manifest)
    )


class LatentScaling:
    """Streaming latent scaling (Minder et al. 2025) for candidate features, both models."""

    def __init__(
        self, cc: Crosscoder, feats: torch.Tensor, own: list[str], *, shared_basis: bool = False
    ) -> None:
        """``shared_basis``: the two models' residual streams share one basis (a model and its
        own fine-tune: :func:`same_residual_basis`), so the other model's activation is read
        along the feature's *own* decoder direction. That is what a DFC exclusive feature,
        which has no decoder row in the other model, is measured by: does the other model
        carry what this feature writes, when it fires?"""
        dev = cc.b_enc.device
        self.cc = cc
        self.shared_basis = shared_basis
        self.feats = feats.to(dev)
        self.own_is_a = torch.tensor([o == "a" for o in own], dtype=torch.bool, device=dev)
        self.n_cand = len(feats)
        self.col_of = torch.full((cc.config.n_features,), -1, dtype=torch.long, device=dev)
        self.col_of[self.feats] = torch.arange(self.n_cand, device=dev)
        with torch.no_grad():
            self.dec: dict[str, torch.Tensor] = {}
            self.dec_norm: dict[str, torch.Tensor] = {}
            for m in ("a", "b"):
                self.dec[m], self.dec_norm[m] = decoder_rows(cc, m, self.feats)
            if shared_basis:  # the other model read along the own direction
                own = torch.where(self.own_is_a[:, None], self.dec["a"], self.dec["b"])
                self.dec = {"a": own, "b": own}
        kw = {"dtype": torch.float64, "device": dev}
        self.sum_f2 = torch.zeros(self.n_cand, **kw)
        self.sum_fe = {m: torch.zeros(self.n_cand, **kw) for m in ("a", "b")}

    @torch.no_grad()
    def update(
        self,
        rows: torch.Tensor,
        feats: torch.Tensor,
        vals: torch.Tensor,
        err_a: torch.Tensor,
        err_b: torch.Tensor,
        chunk: int = 8192,
    ) -> None:
        """Fold in a batch's active entries and its reconstruction errors (x - x_hat)."""
        col = self.col_of[feats]
        keep = col >= 0
        r, c, v = rows[keep], col[keep], vals[keep].float()
        if r.numel() == 0:
            return
        self.sum_f2.index_add_(0, c, v.double().pow(2))
        for m, err in (("a", err_a), ("b", err_b)):
            u = self.dec[m]
            for s in range(0, r.numel(), chunk):
                rr, cc_, vv = r[s : s + chunk], c[s : s + chunk], v[s : s + chunk]
                dots = (err[rr].float() * u[cc_]).sum(1)
                self.sum_fe[m].index_add_(0, cc_, (vv * dots).double())

    def betas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta_own, beta_other) per candidate (NaN where the feature never fired)."""
        out = {}
        for m in ("a", "b"):
            num = self.sum_fe[m] + self.dec_norm[m].double() * self.sum_f2
            out[m] = torch.where(
                self.sum_f2 > 0, num / self.sum_f2.clamp_min(1e-30), torch.nan
            ).float()
        own = torch.where(self.own_is_a, out["a"], out["b"])
        other = torch.where(self.own_is_a, out["b"], out["a"])
        return own, other
