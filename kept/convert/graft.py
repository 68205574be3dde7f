"""MHA -> GQA graft: one Llama attention's K key/value heads merged into G, in closed form (``kept convert --kv-heads
G --kv-init mean|aligned|fit``).

A Llama -> Llama transform of one layer's q/k/v/o, so it applies to the converted attention of every family (and
to a Llama source). Every merge is linear in the heads' projection rows: the shared key (value) head of a group is
``sum_j T_j k_j`` over its members, and each member is read back as ``k_j ~ P_j k_g``; ``P_j`` is folded into the
query rows of the heads that read ``k_j`` (keys) or into their o_proj columns (values), so the model's function
changes only by the merge's residual. The inits differ in ``T`` and ``P`` (algebra: docs/architecture.md, "The
graft"):

* ``mean``: ``T_j = 1/r``, ``P_j = 1`` (the GQA paper's mean pooling), contiguous groups;
* ``aligned``: heads aligned before they are averaged: values by orthogonal maps ``R_j`` (``T_j = R_j / r``,
  ``P_j = R_j^T``, folded into O), keys by one 2x2 rotation per RoPE frequency pair (a unit complex number, which
  commutes with RoPE; the query rows get the same rotation), each solved as a generalised Procrustes problem on the
  calibration moments; groups chosen by the aligned residual;
* ``fit``: activation-aware: the shared value head is the top principal subspace of the members' values weighted
  by what o_proj makes of them (``O_h^T O_h``), the shared key per frequency pair the top complex principal
  component weighted by the queries' energy at that frequency (the score error ``q . dk``); groups chosen by that
  weighted residual. :mod:`kept.convert.calibrate` then refits o_proj on the grafted attention's outputs.

Everything here works on second moments of the layer's projections (:class:`Moments`, from ``E[x x^T]`` of the
attention input), never on per-token data: a 14B layer's merge is ``(K hd)^2`` arithmetic.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from kept.errors import ConfigError, MappingError

KV_INITS = ("mean", "aligned", "fit")
GPA_ITERATIONS = 20  # generalised Procrustes: at most this many alternating updates ...
GPA_TOLERANCE = 1e-9  # ... stopping once no rotation entry moves by more than this
EIG_FLOOR = 1e-10  # relative floor of the eigenvalues of O_h^T O_h when its inverse square root is taken


@dataclass
class Attention:
    """One layer's attention in Llama form, float64. ``q``/``k``/``v`` rows are ``[W | b]`` (``b`` = 0 without
    attention_bias), so the merged biases follow the weights; ``o`` is o_proj's weight ``[d, H hd]`` (its bias is
    not touched by the merge)."""

    q: torch.Tensor  # (H hd, d + 1)
    k: torch.Tensor  # (K hd, d + 1)
    v: torch.Tensor  # (K hd, d + 1)
    o: torch.Tensor  # (d, H hd)
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.heads // self.kv_heads


@dataclass
class Moments:
    """Second moments of the projections on calibration text (pre-RoPE): ``k``/``v`` = ``E[k k^T]`` over all KV
    heads, ``q2`` = ``E[q_i^2]`` per query row."""

    k: torch.Tensor  # (K hd, K hd)
    v: torch.Tensor  # (K hd, K hd)
    q2: torch.Tensor  # (H hd,)


@dataclass
class Merge:
    """The result: the grafted rows (``k``/``v`` with G heads, ``q``/``o`` with their heads regrouped), the groups
    of source KV heads (group g becomes KV head g), and the merge's residuals (fit's weighted metric, relative to
    the heads' total: 0 = lossless)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    groups: list[list[int]]
    residual: dict[str, float] = field(default_factory=dict)


def check_kv_heads(kv_heads: int, *, heads: int, current: int, where: str) -> None:
    """G must divide the KV-head count and change it."""
    if not isinstance(kv_heads, int) or isinstance(kv_heads, bool) or kv_heads <= 0:
        raise ConfigError(f"kv_heads must be a positive integer, found {kv_heads!r}")
    if kv_heads == current:
        raise MappingError(f"{where}: the model already has {current} KV heads; --kv-heads {kv_heads} changes nothing "
                           "(omit it, or choose a divisor of that count below it)")
    if kv_heads > current or current % kv_heads:
        divisors = [g for g in range(1, current) if current % g == 0]
        raise MappingError(f"{where}: --kv-heads {kv_heads} does not divide the {current} KV heads ({heads} query "
                           f"heads); choose one of {divisors}")


def moments(attn: Attention, sigma: torch.Tensor) -> Moments:
    """:class:`Moments` from ``sigma = E[x x^T]`` of the augmented attention input ``[x, 1]`` (``(d+1)^2``)."""
    qs = attn.q @ sigma
    return Moments(k=attn.k @ sigma @ attn.k.T, v=attn.v @ sigma @ attn.v.T, q2=(qs * attn.q).sum(-1))


# ---- per-group merges: coefficients T (merge) and P (read back) ----------------------------------------------


def _complex_moments(c: torch.Tensor, members: list[int], hd: int) -> torch.Tensor:
    """``E[k_j^f conj(k_l^f)]`` per RoPE frequency pair f (channels f and f + hd/2 as one complex number), for the
    members of a group: ``(r, r, hd/2)`` complex."""
    h = hd // 2
    idx = torch.tensor(members)
    blk = c.view(c.shape[0] // hd, hd, c.shape[1] // hd, hd)[idx][:, :, idx]  # (r, hd, r, hd)
    re_re = torch.diagonal(blk[:, :h, :, :h], dim1=1, dim2=3)  # (r, r, h): E[a_j a_l]
    im_im = torch.diagonal(blk[:, h:, :, h:], dim1=1, dim2=3)
    im_re = torch.diagonal(blk[:, h:, :, :h], dim1=1, dim2=3)  # E[b_j a_l]
    re_im = torch.diagonal(blk[:, :h, :, h:], dim1=1, dim2=3)  # E[a_j b_l]
    return torch.complex(re_re + im_im, im_re - re_im)


def _block(c: torch.Tensor, members: list[int], hd: int) -> torch.Tensor:
    """The members' rows and columns of a head-blocked moment matrix: ``(r hd, r hd)``."""
    rows = torch.cat([torch.arange(j * hd, (j + 1) * hd) for j in members])
    return c[rows][:, rows]


def _polar(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor of ``m`` (``U V^T`` of its SVD): the Procrustes rotation."""
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def _unit(z: torch.Tensor) -> torch.Tensor:
    """``z / |z|`` (1 where z = 0): the 2-D Procrustes rotation per frequency pair."""
    mag = z.abs()
    return torch.where(mag > 0, z / mag.clamp_min(1e-300), torch.ones_like(z))


@dataclass
class _Weights:
    """fit's metric for one layer: ``S_j = sum_h O_h^T O_h`` over the query heads reading KV head j (values), and
    ``w_j^f = sum_h E|q_h^f|^2`` (keys); their square roots precomputed."""

    s_half: list[torch.Tensor]  # S_j^(1/2), (hd, hd)
    s_inv_half: list[torch.Tensor]  # S_j^(-1/2)
    w: torch.Tensor  # (K, hd/2)


def _weights(attn: Attention, mom: Moments) -> _Weights:
    hd, rep, h, kvh = attn.head_dim, attn.n_rep, attn.head_dim // 2, attn.kv_heads
    o = attn.o.view(-1, kvh, rep, hd).permute(1, 2, 0, 3).reshape(kvh, -1, hd)  # (K, rep d, hd): O_h of KV head j
    lam, vec = torch.linalg.eigh(o.mT @ o)  # S_j = sum_h O_h^T O_h, all KV heads in one batched call
    lam = lam.clamp_min(float(lam.max()) * EIG_FLOOR + 1e-300)
    s_half = vec @ torch.diag_embed(lam.sqrt()) @ vec.mT
    s_inv_half = vec @ torch.diag_embed(lam.rsqrt()) @ vec.mT
    q2 = mom.q2.view(kvh, rep, hd)
    w = (q2[..., :h] + q2[..., h:]).sum(1)  # (K, hd/2): |q^f|^2 summed over the heads reading KV head j
    return _Weights(list(s_half), list(s_inv_half), w.clamp_min(float(w.max()) * EIG_FLOOR + 1e-300))


def _merge_values(init: str, cv: torch.Tensor, members: list[int], hd: int,
                  wts: _Weights | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Value heads: ``(T_j, P_j)`` per member (hd x hd each) with ``v_g = sum T_j v_j`` and ``v_j ~ P_j v_g``."""
    r = len(members)
    eye = torch.eye(hd, dtype=cv.dtype)
    if init == "mean":
        return [eye / r] * r, [eye] * r
    c = _block(cv, members, hd).view(r, hd, r, hd)
    if init == "aligned":  # generalised Procrustes: rotate every member onto the running mean of the rotated
        ref = torch.zeros(r, hd, hd, dtype=cv.dtype)  # ref = sum_j ref_j v_j, first the first member
        ref[0] = eye
        for _ in range(GPA_ITERATIONS):
            rot = _polar(torch.einsum("jab,jblc->lac", ref, c))  # E[ref v_l^T] -> R_l, all members at once
            done = bool((rot / r - ref).abs().max() < GPA_TOLERANCE)
            ref = rot / r
            if done:
                break
        return list(ref), list(rot.mT)
    # fit: top-hd principal subspace of z_j = S_j^(1/2) v_j (what o_proj makes of the values), jointly
    sh = [wts.s_half[j] for j in members]
    cz = torch.cat([torch.cat([sh[j] @ c[j, :, l] @ sh[l] for l in range(r)], 1) for j in range(r)], 0)
    _, vec = torch.linalg.eigh(cz)
    p = vec[:, -hd:].reshape(r, hd, hd)  # (r, hd, hd): P_j blocks of the top eigenvectors
    scale = math.sqrt(float(sum(torch.trace(s @ s) for s in sh)) / (r * hd)) or 1.0  # keep v_g at the values' scale
    merge = [p[j].T @ sh[j] / scale for j in range(r)]
    back = [wts.s_inv_half[m] @ p[j] * scale for j, m in enumerate(members)]
    return merge, back


def _merge_keys(init: str, ck: torch.Tensor, members: list[int], hd: int,
                wts: _Weights | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key heads, per RoPE frequency pair: complex ``(t, p)``, each ``(r, hd/2)``, with ``k_g = sum t_j k_j`` and
    ``k_j ~ p_j k_g`` (a complex scalar per pair commutes with RoPE's rotation)."""
    r, h = len(members), hd // 2
    if init == "mean":
        one = torch.ones(r, h, dtype=torch.complex128)
        return one / r, one
    kc = _complex_moments(ck, members, hd)  # (r, r, h)
    if init == "aligned":
        t = torch.zeros(r, h, dtype=torch.complex128)
        t[0] = 1
        for _ in range(GPA_ITERATIONS):
            e = _unit(torch.einsum("jf,jlf->lf", t, kc))  # E[ref conj(k_l)] -> the rotation of member l
            done = bool((e / r - t).abs().max() < GPA_TOLERANCE)
            t = e / r
            if done:
                break
        return t, e.conj()
    w = wts.w[members]  # (r, h)
    sw = w.sqrt()
    m = (sw[:, None, :] * sw[None, :, :] * kc).permute(2, 0, 1)  # (h, r, r), Hermitian per pair
    _, vec = torch.linalg.eigh(m)
    u = vec[:, :, -1].T  # (r, h): the top complex principal component per pair
    scale = sw.mean(0)  # keep k_g at the keys' scale
    return u.conj() * sw / scale, u * scale / sw


def _residual(init: str, attn: Attention, mom: Moments, members: list[int], wts: _Weights | None,
              metric: _Weights | None) -> tuple[float, float, tuple]:
    """The merge of one group and its residual energy ``(values, keys)`` in ``metric`` (None: plain L2)."""
    hd, r = attn.head_dim, len(members)
    tv, pv = _merge_values(init, mom.v, members, hd, wts)
    tk, pk = _merge_keys(init, mom.k, members, hd, wts)
    cv = _block(mom.v, members, hd)
    m = torch.eye(r * hd, dtype=cv.dtype) - torch.cat(pv, 0) @ torch.cat(tv, 1)  # v - P T v
    if metric is not None:
        m = torch.block_diag(*[metric.s_half[j] for j in members]) @ m
    res_v = float(torch.trace(m @ cv @ m.T))
    kc = _complex_moments(mom.k, members, hd).permute(2, 0, 1)  # (h, r, r)
    mk = torch.eye(r, dtype=kc.dtype) - torch.einsum("jf,lf->fjl", pk, tk)  # (h, r, r)
    if metric is not None:
        mk = metric.w[members].T.sqrt()[:, :, None].to(kc.dtype) * mk
    res_k = float(torch.einsum("fjl,flm,fjm->", mk, kc, mk.conj()).real)
    return res_v, res_k, (tv, pv, tk, pk)


def _total(mom: Moments, attn: Attention, metric: _Weights | None) -> tuple[float, float]:
    """Energy of all heads in ``metric``: the denominators of the relative residuals."""
    hd, h = attn.head_dim, attn.head_dim // 2
    if metric is None:
        return float(torch.trace(mom.v)), float(torch.trace(mom.k))
    tv = sum(float(torch.trace(metric.s_half[j] @ _block(mom.v, [j], hd) @ metric.s_half[j]))
             for j in range(attn.kv_heads))
    kd = torch.diagonal(mom.k).view(attn.kv_heads, hd)
    tk = float((metric.w * (kd[:, :h] + kd[:, h:])).sum())
    return tv, tk


def pair_costs(init: str, attn: Attention, mom: Moments, wts: _Weights) -> torch.Tensor:
    """``(K, K)``: the relative residual of merging each pair of KV heads alone, values plus keys, in the init's own
    metric, in closed form and batched over all pairs (the group search reads only these).

    ``aligned`` (plain L2): the pair's generalised Procrustes residual, ``(tr C_jj + tr C_ll - 2 ||C_jl||_*) / 2`` for
    the values (``||.||_*``: nuclear norm, the best rotation's overlap), and per key pair ``(E|k_j|^2 + E|k_l|^2 -
    2 |E[k_j conj(k_l)]|) / 2``. ``fit`` (weighted): what the top-hd principal subspace of the whitened pair misses
    (values), and per key pair the smaller eigenvalue of the weighted 2 x 2 Hermitian moment."""
    hd, kvh = attn.head_dim, attn.kv_heads
    a, b = torch.triu_indices(kvh, kvh, 1)
    cv = mom.v.view(kvh, hd, kvh, hd).permute(0, 2, 1, 3)  # (K, K, hd, hd) blocks E[v_j v_l^T]
    kc = _complex_moments(mom.k, list(range(kvh)), hd)  # (K, K, hd/2)
    diag_k = kc.diagonal(dim1=0, dim2=1).real.T  # (K, hd/2): E|k_j^f|^2
    if init == "aligned":
        tr = torch.diagonal(cv.diagonal(dim1=0, dim2=1), dim1=0, dim2=1).sum(-1)  # (K,) tr C_jj
        res_v = (tr[a] + tr[b] - 2 * torch.linalg.svdvals(cv[a, b]).sum(-1)) / 2
        res_k = ((diag_k[a] + diag_k[b] - 2 * kc[a, b].abs()) / 2).sum(-1)
    else:
        sh = torch.stack(wts.s_half)  # (K, hd, hd)
        zz = lambda j, l: sh[j] @ cv[j, l] @ sh[l]  # noqa: E731 - whitened blocks, batched over pairs
        cz = torch.cat([torch.cat([zz(a, a), zz(a, b)], -1), torch.cat([zz(b, a), zz(b, b)], -1)], -2)
        lam = torch.linalg.eigvalsh(cz)  # (P, 2 hd), ascending
        res_v = lam[:, :hd].sum(-1)
        wa, wb = wts.w[a], wts.w[b]
        p, q, c = wa * diag_k[a], wb * diag_k[b], (wa * wb).sqrt() * kc[a, b].abs()
        res_k = ((p + q) / 2 - (((p - q) / 2) ** 2 + c**2).sqrt()).sum(-1)  # the smaller eigenvalue
    tv, tk = _total(mom, attn, wts if init == "fit" else None)
    cost = torch.zeros(kvh, kvh, dtype=mom.v.dtype)
    cost[a, b] = cost[b, a] = res_v.clamp_min(0) / max(tv, 1e-300) + res_k.clamp_min(0) / max(tk, 1e-300)
    return cost


def choose_groups(pair: torch.Tensor, size: int, cost) -> list[list[int]]:
    """Groups of ``size`` among the ``n`` heads of the pairwise cost matrix ``pair`` with a small total
    ``cost(group)``: greedy by pairwise costs (seeded by the cheapest pair left, grown by the head with the least
    summed cost to the group), kept only if it beats contiguous groups ``[0..size-1], ...``."""
    n = pair.shape[0]
    contiguous = [list(range(g * size, (g + 1) * size)) for g in range(n // size)]
    if size == n:
        return contiguous
    left, greedy = list(range(n)), []
    while left:
        sub = pair[left][:, left] + torch.diag(torch.full((len(left),), math.inf, dtype=pair.dtype))
        i, j = divmod(int(sub.argmin()), len(left))
        group = [left[i], left[j]]
        while len(group) < size:
            rest = [m for m in left if m not in group]
            group.append(rest[int(pair[rest][:, group].sum(1).argmin())])
        greedy.append(sorted(group))
        left = [m for m in left if m not in group]
    greedy.sort()
    return greedy if sum(map(cost, greedy)) < sum(map(cost, contiguous)) else contiguous


@contextmanager
def _one_thread() -> Iterator[None]:
    """Small dense decompositions (hd x hd SVDs, 2hd x 2hd eigenproblems) on one thread: MKL's threaded LAPACK gains
    nothing at these sizes and, on a loaded machine, loses 15-70x waiting for its threads (measured: a batched
    780 x 256^2 eigvalsh took 140 s on 2 threads, 7 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def graft_attention(attn: Attention, *, kv_heads: int, init: str, sigma: torch.Tensor | None) -> Merge:
    """Merge ``attn``'s KV heads into ``kv_heads`` groups with ``init`` (``sigma``: ``E[x x^T]`` of the augmented
    attention input, needed by ``aligned`` and ``fit``)."""
    if init not in KV_INITS:
        raise ConfigError(f"unknown kv_init {init!r}; expected one of {', '.join(KV_INITS)}")
    if sigma is None:  # mean needs no data: moments of a white input only size the residual
        sigma = torch.eye(attn.q.shape[1], dtype=attn.q.dtype)
    mom = moments(attn, sigma)  # the only large products: every thread
    with _one_thread():
        return _graft(attn, mom, kv_heads=kv_heads, init=init)


def _graft(attn: Attention, mom: Moments, *, kv_heads: int, init: str) -> Merge:
    hd, kvh, rep = attn.head_dim, attn.kv_heads, attn.n_rep
    size = kvh // kv_heads
    wts = _weights(attn, mom)
    own = wts if init == "fit" else None  # each init groups by its own residual
    if init == "mean":
        groups = [list(range(g * size, (g + 1) * size)) for g in range(kv_heads)]
    else:
        tv_, tk_ = _total(mom, attn, own)
        groups = choose_groups(pair_costs(init, attn, mom, wts), size, lambda g: sum(x / max(t, 1e-300) for x, t in zip(
            _residual(init, attn, mom, g, wts, own)[:2], (tv_, tk_))))
    k_rows, v_rows, q_rows, o_cols = [], [], [], []
    res_v = res_k = 0.0
    for group in groups:
        rv, rk, (tv, pv, tk, pk) = _residual(init, attn, mom, group, wts, wts)
        res_v, res_k = res_v + rv, res_k + rk
        v_rows.append(sum(tv[m] @ attn.v[j * hd : (j + 1) * hd] for m, j in enumerate(group)))
        kc = sum(tk[m][:, None] * _to_complex(attn.k[j * hd : (j + 1) * hd]) for m, j in enumerate(group))
        k_rows.append(_to_real(kc))
        for m, j in enumerate(group):  # the query heads reading KV head j follow it, with its read-back folded in
            for t in range(rep):
                head = j * rep + t
                q = _to_complex(attn.q[head * hd : (head + 1) * hd])
                q_rows.append(_to_real(q * pk[m].conj()[:, None]))  # q . conj(p k_g) = (q conj(p)) . conj(k_g)
                o_cols.append(attn.o[:, head * hd : (head + 1) * hd] @ pv[m])
    tv_, tk_ = _total(mom, attn, wts)
    return Merge(q=torch.cat(q_rows), k=torch.cat(k_rows), v=torch.cat(v_rows), o=torch.cat(o_cols, 1),
                 groups=groups, residual={"values": res_v / max(tv_, 1e-300), "keys": res_k / max(tk_, 1e-300)})


def _to_complex(rows: torch.Tensor) -> torch.Tensor:
    """One head's rows ``(hd, d+1)`` in Llama's rotate-half layout as complex rows ``(hd/2, d+1)``."""
    h = rows.shape[0] // 2
    return torch.complex(rows[:h], rows[h:])


def _to_real(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows.real, rows.imag])


def graft_record(config: dict, *, kv_heads_source: int, kv_init: str) -> dict:
    """conversion.json's ``graft``: KV heads before and after, the init, and the KV-cache bytes per token in the
    model's dtype (keys and values of every layer; bench/bench_graft.py measures them in transformers' cache)."""
    item = {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(config.get("dtype")), 4)
    per_token = lambda g: 2 * config["num_hidden_layers"] * g * config["head_dim"] * item  # noqa: E731
    g = config["num_key_value_heads"]
    return {"kv_heads_source": kv_heads_source, "kv_heads": g, "kv_init": kv_init,
            "kv_cache_bytes_per_token": {"source": per_token(kv_heads_source), "output": per_token(g)}}
