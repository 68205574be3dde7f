"""Uncertainty for the report: standard errors over items, spread over seeds, and paired tests between models.

Every reported number is a statistic over *units* (benchmark items, MT-Bench questions, documents, corpus
sequences). A :class:`Sample` holds one model's per-unit data as ``(num, den)`` pairs in one or more *strata*
(the tasks of an average), and its statistic is

    stat = transform( sum_k weight_k * sum_i num_ki / sum_i den_ki )

which covers a plain mean (``den = 1``), a token-weighted perplexity (``num`` = summed NLL, ``den`` = tokens,
``transform = exp``) and an average over tasks (one stratum per task, ``weight = 1 / K``).

- :func:`bootstrap_se` resamples units with replacement within each stratum (``iters`` replicates, a fixed
  seed) and returns the standard deviation of the statistic: the standard error over items.
- :func:`paired_test` compares two models on the *same* units (aligned by unit id) with a paired sign-flip
  permutation test on the per-unit differences (two-sided; exact enumeration when at most 16 units differ,
  otherwise ``iters`` random sign patterns). It is the exact randomisation test behind McNemar's test for 0/1 scores
  and works unchanged for graded scores (MT-Bench 1-10, mc2 mass) and NLL sums. The test is on the
  untransformed ratio (log-perplexity for perplexity), which is monotone in the reported value.
- :func:`seed_mean` averages several seeds' samples unit by unit (the same items in every seed), so the
  standard error of a seed mean is still over items; :func:`seed_sd` is the spread of the per-seed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from kept.errors import KeptError

BOOTSTRAP_ITERS = 2000
PERMUTATION_ITERS = 20000
EXACT_UP_TO = 16  # units: enumerate all 2^n sign patterns up to this many
ALPHA = 0.05
SEED = 20240611


def identity(x: float) -> float:
    return x


@dataclass
class Stratum:
    """Per-unit ``num`` / ``den`` of one task (or the only task), with unit ids for pairing."""

    ids: list[str]
    num: np.ndarray  # (n,)
    den: np.ndarray  # (n,)
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.num = np.asarray(self.num, dtype=np.float64)
        self.den = np.asarray(self.den, dtype=np.float64)
        if not (len(self.ids) == self.num.shape[0] == self.den.shape[0]) or not len(self.ids):
            raise KeptError(f"stratum: {len(self.ids)} ids, {self.num.shape} num, {self.den.shape} den")
        if len(set(self.ids)) != len(self.ids):
            raise KeptError("stratum: duplicate unit ids")
        if not np.all(self.den > 0):
            raise KeptError("stratum: every unit needs a positive denominator")


@dataclass
class Sample:
    """One model's per-unit data for one table cell."""

    strata: list[Stratum]
    transform: Callable[[float], float] = identity
    scale: float = 1.0  # applied after the transform (100 for percent)
    extras: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(len(s.ids) for s in self.strata)

    def raw(self) -> float:
        return float(sum(s.weight * s.num.sum() / s.den.sum() for s in self.strata))

    def value(self) -> float:
        return self.scale * self.transform(self.raw())


def mean_sample(ids: Sequence[str], values: Sequence[float], *, scale: float = 1.0) -> Sample:
    """A plain mean over units."""
    return Sample([Stratum(list(ids), np.asarray(values, float), np.ones(len(values)))], scale=scale)


def average_sample(parts: Sequence[Sample]) -> Sample:
    """The unweighted mean of several statistics (e.g. the H6 average over its columns), each over its own
    units: the parts' strata with their weights divided by K. Parts must share scale and have no transform."""
    if not parts:
        raise KeptError("average of no columns")
    if any(p.transform is not identity for p in parts) or len({p.scale for p in parts}) != 1:
        raise KeptError("average_sample: parts must be untransformed statistics on one scale")
    k = len(parts)
    strata = [Stratum(s.ids, s.num, s.den, s.weight / k) for p in parts for s in p.strata]
    return Sample(strata, scale=parts[0].scale)


def _ratio_replicates(stratum: Stratum, idx: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of one stratum's ratio, their spread about the mean inflated by sqrt(n / (n - 1)):
    the plain bootstrap of a mean has variance s^2 (n - 1) / n^2, the correction makes it the usual s^2 / n
    (ddof 1, as lm-eval's stderr), which matters for the few units of an MT-Bench category or of long documents."""
    rep = stratum.num[idx].sum(axis=1) / stratum.den[idx].sum(axis=1)
    n = len(stratum.ids)
    return rep.mean() + (rep - rep.mean()) * math.sqrt(n / (n - 1))


def bootstrap_se(sample: Sample, *, iters: int = BOOTSTRAP_ITERS, seed: int = SEED) -> float:
    """Standard error of ``sample.value()`` over units: the standard deviation of ``iters`` bootstrap
    replicates, resampling units with replacement within each stratum. A single unit gives nan."""
    if any(len(s.ids) < 2 for s in sample.strata):
        return math.nan
    rng = np.random.default_rng(seed)
    raw = np.zeros(iters)
    for s in sample.strata:
        idx = rng.integers(0, len(s.ids), size=(iters, len(s.ids)))
        raw += s.weight * _ratio_replicates(s, idx)
    values = sample.scale * np.vectorize(sample.transform, otypes=[float])(raw)
    return float(values.std(ddof=1))


def _aligned(a: Sample, b: Sample, *, common: bool = False) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per stratum: (difference of num, the shared den, weight) over the units both samples cover, aligned by
    id (``common``: the units they share; otherwise they must cover the same units). Shared units must have
    the same denominators in both (the same items, tokens or documents)."""
    if len(a.strata) != len(b.strata):
        raise KeptError(f"paired test: {len(a.strata)} vs {len(b.strata)} strata")
    out = []
    for k, (sa, sb) in enumerate(zip(a.strata, b.strata)):
        if not common and set(sa.ids) != set(sb.ids):
            raise KeptError(f"paired test: stratum {k} covers different units ({len(sa.ids)} vs {len(sb.ids)})")
        order = {u: i for i, u in enumerate(sb.ids)}
        i = np.array([n for n, u in enumerate(sa.ids) if u in order], dtype=int)
        if not len(i):
            raise KeptError(f"paired test: stratum {k} has no unit in common")
        j = np.array([order[sa.ids[n]] for n in i], dtype=int)
        if not np.allclose(sa.den[i], sb.den[j]):
            raise KeptError(f"paired test: stratum {k} units have different denominators in the two models")
        out.append((sa.num[i] - sb.num[j], sa.den[i], sa.weight))
    return out


def paired_test(a: Sample, b: Sample, *, iters: int = PERMUTATION_ITERS, seed: int = SEED) -> float:
    """Two-sided p-value of "a and b have the same statistic" by a paired sign-flip permutation test over the
    shared units. Each unit's difference keeps or flips its sign at random; the p-value is the share of sign
    patterns whose statistic is at least as far from 0 as the observed one (the observed pattern included)."""
    parts = _aligned(a, b, common=True)
    diffs = np.concatenate([d * w / den.sum() for d, den, w in parts])  # stat(signs) = signs @ diffs
    diffs = diffs[diffs != 0.0]  # units on which the two agree do not move under any sign pattern
    observed = abs(diffs.sum())
    n = diffs.shape[0]
    if observed == 0.0:
        return 1.0
    tol = 1e-12 * max(1.0, observed)
    if n <= EXACT_UP_TO:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # (2^n, n)
        stats = np.abs(patterns @ diffs)
        return float((stats >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < iters:
        m = min(4096, iters - done)
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        hits += int((np.abs(signs @ diffs) >= observed - tol).sum())
        done += m
    return (hits + 1) / (iters + 1)


def seed_mean(samples: Sequence[Sample]) -> Sample:
    """Several seeds of one model on the same units: per unit, the mean of ``num`` over seeds (the units and
    their denominators must agree)."""
    if not samples:
        raise KeptError("seed_mean of no samples")
    first = samples[0]
    if len(samples) == 1:
        return first
    strata = []
    for k, s0 in enumerate(first.strata):
        nums = [s0.num]
        for other in samples[1:]:
            _aligned(other, first)  # same strata, units and denominators, or a KeptError
            order = {u: i for i, u in enumerate(other.strata[k].ids)}
            nums.append(other.strata[k].num[[order[u] for u in s0.ids]])
        strata.append(Stratum(s0.ids, np.mean(nums, axis=0), s0.den, s0.weight))
    return Sample(strata, transform=first.transform, scale=first.scale)


def seed_sd(values: Sequence[float]) -> float:
    """Standard deviation (ddof 1) of per-seed values; nan for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def propagate(ses: Sequence[float], weights: Sequence[float]) -> float:
    """Standard error of a weighted sum of independent estimates."""
    return float(math.sqrt(sum((w * s) ** 2 for s, w in zip(ses, weights))))


def joint_replicates(samples: Sequence[Sample], *, iters: int = BOOTSTRAP_ITERS, seed: int = SEED) -> np.ndarray:
    """Bootstrap replicates of several models' statistics on the SAME units, resampled jointly (the same
    resampled items for every model, within each stratum): an ``(iters, len(samples))`` array of values. Any
    function of the columns (a difference, a recovered fraction) then gets a paired percentile interval."""
    if not samples:
        raise KeptError("joint bootstrap of no samples")
    first = samples[0]
    rng = np.random.default_rng(seed)
    raw = np.zeros((iters, len(samples)))
    for k, s0 in enumerate(first.strata):
        if len(s0.ids) < 2:
            return np.full((iters, len(samples)), math.nan)
        idx = rng.integers(0, len(s0.ids), size=(iters, len(s0.ids)))
        for j, sample in enumerate(samples):
            sk = sample.strata[k]
            order = {u: i for i, u in enumerate(sk.ids)}
            if set(order) != set(s0.ids):
                raise KeptError(f"joint bootstrap: stratum {k} covers different units in sample {j}")
            perm = np.array([order[u] for u in s0.ids])
            aligned = Stratum(s0.ids, sk.num[perm], sk.den[perm], sk.weight)
            raw[:, j] += sk.weight * _ratio_replicates(aligned, idx)
    out = np.empty_like(raw)
    for j, sample in enumerate(samples):
        out[:, j] = sample.scale * np.vectorize(sample.transform, otypes=[float])(raw[:, j])
    return out


def interval(replicates: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (nan-free)."""
    values = replicates[np.isfinite(replicates)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
