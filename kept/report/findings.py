"""docs/findings.md: each claim of the paper checked against this run's results, generated (never typed).

One row per claim and variant: the paper's figure, the run's figure with a 95% interval (paired bootstrap over
the evaluation's units, :func:`kept.report.stats.joint_replicates`, or a paired permutation test), a verdict and
the criterion it applies. A verdict is ``agrees`` / ``disagrees`` when the interval (or test) settles the
criterion one way, ``not separable`` when it does not; claims whose models the run lacks are left out. For
every claim the toy does not reproduce (or cannot separate), the same measurement on each alternative of the
run (the corpus-breadth ablation of ``train.ablations``, the other mappings of ``train.init``, the teacher in the
Llama-3 format) tests an explanation (``EXPLANATIONS``), judged by the claim's own criterion.

The regime of the bench (issue 26, :mod:`kept.report.regime`) adds two claims the in / out-of-corpus split of the
toy suites makes testable -- XKD keeps out-of-corpus knowledge better than UT, and UT forgets out-of-corpus
knowledge -- and one explanation for every XKD-versus-UT claim that does not hold: the teacher is still learning
(the Teacher + UT control beats it).

Inputs are :class:`kept.report.inputs.Item` with ``tag`` naming the kind of file: ``h6`` (summary, detail = raw
lm-eval directory), ``mtbench-<format>`` (summary, detail = judgments), ``code`` (summary, detail = items),
``longctx`` (summary with per-document NLL), ``pilot`` (cosine.jsonl), and for the regime check ``mixture``,
``train`` and ``pretrain-<teacher>`` (kept.report.results).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from kept.atomic import atomic_file
from kept.errors import KeptError
from kept.grid import CONTROL
from kept.grid import parse as parse_trained
from kept.grid import parse_init
from kept.report import paper, stats
from kept.report.inputs import Item, number
from kept.report.regime import RegimeCheck, regime_checks
from kept.report.results import RunResults
from kept.report.tables import INIT_NAMES, model_label

COLLAPSE = 0.5  # "collapse": keeps less than this share of the teacher's margin above chance (floor)
RECOVER = 0.9  # "recovers": regains at least this share of what the conversion lost
SURVIVE = 0.8  # "survives": keeps at least this share of the teacher's code accuracy
LONGCTX_MARGIN = 1.10  # "within a small margin": student / teacher perplexity at most this
PILOT_COS = 0.9  # "converges toward gamma": final mean cosine at least this
MT_FLOOR = 1.0


@dataclass
class Test:
    """The same measurement as a claim's, on an alternative arm of the run that tests one explanation."""

    explanation: str  # a key of EXPLANATIONS
    arm: str
    figure: str
    verdict: str  # the claim's criterion applied to this arm
    outcome: str  # OUTCOME of the verdict: supported / not supported / inconclusive


@dataclass
class Finding:
    claim: str
    variant: str
    paper: str
    toy: str
    verdict: str
    criterion: str
    tests: list[Test] = field(default_factory=list)

    @property
    def experiment(self) -> str:
        """The tests as one line of text ('' if none)."""
        return " ".join(f"[{t.explanation}] {t.arm}: {t.figure} -> {t.verdict}: {t.outcome}." for t in self.tests)


def _fmt(x: float, spec: str = ".1f") -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, spec)


def _ci(lo: float, hi: float, spec: str = ".2f") -> str:
    return f"[{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def _band(lo: float, hi: float, threshold: float, *, above: bool) -> str:
    """Verdict of "the quantity is above (below) threshold" from its 95% interval."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no data"
    if above:
        return "agrees" if lo >= threshold else "disagrees" if hi < threshold else "not separable"
    return "agrees" if hi < threshold else "disagrees" if lo >= threshold else "not separable"


def _strictly_positive(lo: float, hi: float) -> str:
    """Verdict of "the quantity is > 0" from its 95% interval (an interval at or below zero disagrees)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no data"
    return "agrees" if lo > 0 else "disagrees" if hi <= 0 else "not separable"


def _direction(diff: float, p: float, *, expected: int) -> str:
    """Verdict of "a > b" (expected = +1) from the paired difference a - b and its permutation p-value."""
    if not math.isfinite(diff) or p is None:
        return "no data"
    if p >= stats.ALPHA:
        return "not separable"
    return "agrees" if np.sign(diff) == expected else "disagrees"


def _joint(samples: list[stats.Sample | None], fn: Callable[..., float]) -> tuple[float, float, float]:
    """(point, 95% low, 95% high) of fn over several models' statistics on the same units."""
    if any(s is None for s in samples):
        return math.nan, math.nan, math.nan
    point = fn(*[s.value() for s in samples])
    reps = stats.joint_replicates(samples)
    lo, hi = stats.interval(np.array([fn(*row) for row in reps]))
    return point, lo, hi


def _share(x: float, ref: float, base: float) -> float:
    """(x - base) / (ref - base): the share of ref's margin over base that x keeps."""
    return (x - base) / (ref - base) if ref != base else math.nan


def _paired(a: stats.Sample | None, b: stats.Sample | None) -> tuple[float, float | None]:
    if a is None or b is None:
        return math.nan, None
    return a.value() - b.value(), stats.paired_test(a, b)


@dataclass(frozen=True)
class Arm:
    """The students a claim is measured on: the paper's (from OPM on the transfer corpus) or an alternative of
    this run (another init of train.init, an ablation corpus of train.ablations), by method."""

    label: str
    suffix: str = ""  # kept.grid suffix: "@exact", "+broad"
    explanation: str = ""  # a key of EXPLANATIONS

    def __call__(self, method: str) -> str:
        return method + self.suffix


PAPER = Arm("the paper's pipeline")
# the claim's verdict on an alternative arm -> what it says of the explanation that arm tests
OUTCOME = {"agrees": "supported", "disagrees": "not supported", "not separable": "inconclusive"}
MEASURE = Callable[..., tuple[str, str]]  # (this run's figure, verdict)
EXPLANATIONS = {
    "corpus": ("the transfer corpus (encyclopedic passages, as MIRACL) never shows the formats and the dialogue the "
               "suites score, so matching the teacher on it leaves those behaviours unconstrained. Test: the same "
               "measurement for students trained on an ablation corpus with the world's quiz and dialogue text "
               "(never a held-out item) at the same budget (train.ablations)"),
    "init": ("OPM starts too far from the teacher for the budget to bring back what it destroyed. Test: the same "
             "measurement for the same methods and budget from a mapping next to the teacher (train.init)"),
    "template": ("the toy teacher never saw the Llama-3 template, so no model of the grid can answer in it. Test: "
                 "the teacher itself in the Llama-3 format"),
    "coverage": ("the transfer corpus is a narrow slice (corpus.coverage): UT cannot relearn from it what it never "
                 "states. Test: the same measurement for students trained on the full-coverage corpus (every "
                 "entity's facts, the corpus of the earlier regime) at the same budget (train.ablations)"),
    "regime": ("the teacher is still learning, so UT on the transfer corpus is more pretraining while XKD copies an "
               "unfinished teacher. Test: the regime check (the regime table): Teacher + UT, the teacher itself "
               "trained with UT's settings on the transfer corpus at the same budget, against the teacher on toy-H6 "
               "(all items, in-corpus items) and on its held-out pretraining mixture; the explanation is supported "
               "when Teacher + UT beats the teacher there"),
}


class Checker:
    """Builds the findings rows from a :class:`RunResults`: every claim is a measurement on the paper's arm;
    where it does not hold, the same measurement on each alternative arm of this run tests an explanation."""

    def __init__(self, run: RunResults, *, train_init: str, arm_explanations: dict[str, str] | None = None) -> None:
        self.run = run
        self.train_init = train_init
        names = [parse_trained(m) for key in (run.h6, run.mt, run.code, run.longctx) for (_, m, *_) in key]
        # the fast path is no arm (not at the budget), nor is the regime control (no student)
        names = [t for t in names if t is not None and not t.stop and not t.control]
        corpora = sorted({t.corpus for t in names if t.corpus})
        # grafted inits (issue 28) are no alternative arm of the paper's claims: they have claims of their own
        self.inits = sorted({t.init for t in names if t.init and parse_init(t.init).kv_heads is None})
        explain = arm_explanations or {}
        self.arms = ([Arm(f"{c} corpus", f"+{c}", explain.get(c, "corpus")) for c in corpora]
                     + [Arm(f"from the {i} mapping", f"@{i}", "init") for i in self.inits])
        self.regime: dict[str, RegimeCheck] = {c.variant: c for c in regime_checks(run)}

    def label(self, model: str) -> str:
        return model_label(model, train_init=self.train_init)

    def finding(self, claim: str, variant: str, paper_text: str, criterion: str, measure: MEASURE,
                extra: list[tuple[str, str, Callable[[], tuple[str, str]]]] = (), *,
                arms: list[Arm] | None = None) -> Finding:
        """A claim measured on the paper's arm; if it does not hold, the same ``measure`` on every alternative
        arm of the run (``arms``, default all; plus ``extra`` tests: (label, explanation key, measure)) tests the
        explanations."""
        toy, verdict = measure(PAPER)
        f = Finding(claim, variant, paper_text, toy, verdict, criterion)
        if verdict == "agrees":
            return f
        arms = self.arms if arms is None else arms
        tests = [(arm.label, arm.explanation, lambda arm=arm: measure(arm)) for arm in arms] + list(extra)
        for label, key, run in tests:
            figure, outcome = run()
            if outcome != "no data":
                f.tests.append(Test(key, label, figure, outcome, OUTCOME[outcome]))
        return f

    # ---- claims ----------------------------------------------------------------------------------------------
    def opm_collapse(self, variant: str) -> Finding:
        r = self.run
        chance = r.h6_chance(variant)
        ref = paper.TABLE3.get(variant, {})

        def measure(_: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.h6_avg(variant, "init-paper"), r.h6_avg(variant, "teacher")],
                                   lambda o, t: _share(o, t, chance))
            return (f"OPM keeps {_fmt(point, '.2f')} {_ci(lo, hi)} of the teacher's H6 margin over chance "
                    f"({chance:.1f})", _band(lo, hi, COLLAPSE, above=False))

        return self.finding(
            "OPM (no training) collapses H6 towards chance", variant,
            f"OPM {ref['opm'][-1]:.1f} vs teacher {ref['original'][-1]:.1f}: keeps "
            f"{_share(ref['opm'][-1], ref['original'][-1], chance):.2f} of the margin over chance" if ref else "–",
            f"share < {COLLAPSE} (95% interval)", measure)

    def opm_floor(self, variant: str, fmt: str) -> Finding:
        r = self.run
        ref = paper.TABLE4.get(variant, {})

        def measure(_: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.mt_avg(variant, "init-paper", fmt), r.mt_avg(variant, "teacher", "orion")],
                                   lambda o, t: _share(o, t, MT_FLOOR))
            return (f"OPM keeps {_fmt(point, '.2f')} {_ci(lo, hi)} of the teacher's margin over the floor",
                    _band(lo, hi, COLLAPSE, above=False))

        return self.finding(
            f"OPM collapses MT-Bench to the floor ({FORMAT_LABEL.get(fmt, fmt)} format)", variant,
            f"OPM {ref['opm'][2]:.2f} vs teacher {ref['original'][2]:.2f} (floor 1)" if ref else "–",
            f"share < {COLLAPSE} (95% interval)", measure)

    def xkd_recovers(self, variant: str) -> Finding:
        r = self.run
        ref = paper.TABLE3.get(variant, {})

        def measure(arm: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.h6_avg(variant, arm("xkd_z")), r.h6_avg(variant, "init-paper"),
                                    r.h6_avg(variant, "teacher")], lambda s, o, t: _share(s, t, o))
            return (f"{self.label(arm('xkd_z'))} regains {_fmt(point, '.2f')} {_ci(lo, hi)} of what OPM lost",
                    _band(lo, hi, RECOVER, above=True))

        return self.finding(
            "XKD-z (from OPM) recovers the teacher's H6", variant,
            f"XKD-z {ref['xkd_z'][-1]:.1f} vs teacher {ref['original'][-1]:.1f}: regains "
            f"{_share(ref['xkd_z'][-1], ref['original'][-1], ref['opm'][-1]):.2f} of OPM's loss" if ref else "–",
            f"share regained >= {RECOVER} (95% interval)", measure)

    def template_test(self, variant: str) -> tuple[str, str, Callable[[], tuple[str, str]]]:
        """The Llama-3 floor explained by the template: the teacher itself in Llama-3 format."""
        r = self.run

        def measure() -> tuple[str, str]:
            point, lo, hi = _joint([r.mt_avg(variant, "teacher", "llama3"), r.mt_avg(variant, "teacher", "orion")],
                                   lambda l3, o: _share(l3, o, MT_FLOOR))
            return (f"the teacher in Llama-3 format keeps {_fmt(point, '.2f')} {_ci(lo, hi)} of its Orion-format "
                    "margin over the floor", _band(lo, hi, COLLAPSE, above=False))

        return "the teacher in the Llama-3 format", "template", measure

    def xkd_recovers_mt(self, variant: str, fmt: str) -> Finding:
        r = self.run
        ref = paper.TABLE4.get(variant, {})

        def measure(arm: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.mt_avg(variant, arm("xkd_z"), fmt), r.mt_avg(variant, "init-paper", fmt),
                                    r.mt_avg(variant, "teacher", "orion")], lambda s, o, t: _share(s, t, o))
            return (f"{self.label(arm('xkd_z'))} regains {_fmt(point, '.2f')} {_ci(lo, hi)} of what OPM lost",
                    _band(lo, hi, RECOVER, above=True))

        extra = [self.template_test(variant)] if fmt == "llama3" else []
        return self.finding(
            f"XKD-z (from OPM) recovers the teacher's MT-Bench ({FORMAT_LABEL.get(fmt, fmt)} format)", variant,
            f"XKD-z {ref['xkd_z'][2]:.2f} vs teacher {ref['original'][2]:.2f}: regains "
            f"{_share(ref['xkd_z'][2], ref['original'][2], ref['opm'][2]):.2f} of OPM's loss" if ref else "–",
            f"share regained >= {RECOVER} (95% interval; teacher in Orion format)", measure, extra)

    def ordering(self, variant: str, better: str, worse: str, *, metric: str, fmt: str = "llama3") -> Finding:
        r = self.run
        if metric == "h6":
            ref = paper.TABLE3.get(variant, {})
            pv = (ref[better][-1] - ref[worse][-1]) if ref else math.nan
            unit, name = "H6 points", "H6"
        else:
            ref = paper.TABLE4.get(variant, {})
            pv = (ref[better][2] - ref[worse][2]) if ref else math.nan
            unit, name = f"MT-Bench points ({FORMAT_LABEL.get(fmt, fmt)})", f"MT-Bench, {FORMAT_LABEL.get(fmt, fmt)}"

        def score(model: str):
            return r.h6_avg(variant, model) if metric == "h6" else r.mt_avg(variant, model, fmt)

        def measure(arm: Arm) -> tuple[str, str]:
            a, b = score(arm(better)), score(arm(worse))
            if a is None and worse == "ut" and better != "xkd_z":  # XKD-z stands for XKD where only it was trained
                a = score(arm("xkd_z"))
                label = self.label(arm("xkd_z"))
            else:
                label = self.label(arm(better))
            diff, p = _paired(a, b)
            return (f"{label} - {self.label(arm(worse))} = {_fmt(diff, '+.2f')} {unit}, paired p = "
                    f"{_fmt(p, '.3g') if p is not None else 'nan'}", _direction(diff, p, expected=1))

        sign = ">=" if (better, worse) == ("xkd_z", "xkd_h") else ">"
        extra = [self.template_test(variant)] if metric != "h6" and fmt == "llama3" else []
        if worse == "ut":  # is UT ahead because the teacher is still learning?
            extra += self.regime_test(variant)
        return self.finding(f"XKD-{better[-1]} {sign} {METHOD_LABEL[worse]} ({name})", variant,
                            f"{pv:+.2f} {unit}" if math.isfinite(pv) else "–",
                            "sign of the difference, paired sign-flip test p < 0.05", measure, extra)

    def generative_gap(self, variant: str, fmt: str) -> Finding:
        r = self.run
        chance = r.h6_chance(variant)
        ref3, ref4 = paper.TABLE3.get(variant, {}), paper.TABLE4.get(variant, {})
        paper_text = "–"
        if ref3 and ref4:
            pm = (ref4["xkd_z"][2] - ref4["ut"][2]) / (ref4["original"][2] - MT_FLOOR)
            ph = (ref3["xkd_z"][-1] - ref3["ut"][-1]) / (ref3["original"][-1] - chance)
            paper_text = f"(XKD-z - UT) / teacher margin: MT-Bench {pm:.3f} vs H6 {ph:.3f}"

        def measure(arm: Arm) -> tuple[str, str]:
            mt = [r.mt_avg(variant, arm("xkd_z"), fmt), r.mt_avg(variant, arm("ut"), fmt),
                  r.mt_avg(variant, "teacher", "orion")]
            h6 = [r.h6_avg(variant, arm("xkd_z")), r.h6_avg(variant, arm("ut")), r.h6_avg(variant, "teacher")]
            if any(x is None for x in mt + h6):
                return "–", "no data"
            g_mt = lambda z, u, t: (z - u) / (t - MT_FLOOR)  # noqa: E731
            g_h6 = lambda z, u, t: (z - u) / (t - chance)  # noqa: E731
            rep_mt = stats.joint_replicates(mt, seed=stats.SEED + 1)
            rep_h6 = stats.joint_replicates(h6, seed=stats.SEED + 2)
            lo, hi = stats.interval(np.array([g_mt(*a) - g_h6(*b) for a, b in zip(rep_mt, rep_h6)]))
            point_mt, point_h6 = g_mt(*[x.value() for x in mt]), g_h6(*[x.value() for x in h6])
            verdict = _band(lo, hi, 0.0, above=True)
            if verdict == "agrees" and not point_mt > 0:
                verdict = "not separable"  # "wider" needs XKD-z ahead on MT-Bench at all
            return (f"{self.label(arm('xkd_z'))} vs {self.label(arm('ut'))}: MT-Bench {_fmt(point_mt, '+.3f')} vs "
                    f"H6 {_fmt(point_h6, '+.3f')}; difference {_fmt(point_mt - point_h6, '+.3f')} {_ci(lo, hi, '+.3f')}",
                    verdict)

        extra = [self.template_test(variant)] if fmt == "llama3" else []
        return self.finding(f"UT-vs-XKD-z gap wider on MT-Bench ({FORMAT_LABEL.get(fmt, fmt)}) than on H6", variant,
                            paper_text, "difference of the normalised gaps > 0 (95% interval)", measure, extra)

    def code_survives(self, variant: str) -> Finding:
        r = self.run

        def measure(arm: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.code_acc(variant, arm("xkd_z")), r.code_acc(variant, "teacher")],
                                   lambda s, t: s / t if t else math.nan)
            return (f"{self.label(arm('xkd_z'))} keeps {_fmt(point, '.2f')} {_ci(lo, hi)} of the teacher's "
                    "code-probe accuracy", _band(lo, hi, SURVIVE, above=True))

        return self.finding("Code (absent from the transfer corpus) survives XKD-z", variant,
                            "Llamion-Chat writes competent Python (qualitative, Appendix C)",
                            f"share kept >= {SURVIVE} (95% interval)", measure)

    def longctx_survives(self, variant: str) -> Finding | None:
        r = self.run
        t_runs = r.longctx.get((variant, "teacher"))
        if not t_runs or not r.longctx.get((variant, "xkd_z")):
            return None
        tml = t_runs[0][0].get("train_max_length") or 0
        points = [(src, n) for (src, n) in t_runs[0][1] if n > tml]
        if not points:
            return None
        top = max(n for _, n in points)

        def measure(arm: Arm) -> tuple[str, str]:
            s_runs = r.longctx.get((variant, arm("xkd_z")))
            if not s_runs:
                return "–", "no data"
            worst = None
            for src, n in points:
                if n != top:
                    continue
                s_sample = stats.seed_mean([found[(src, n)] for _, found in s_runs])
                point, lo, hi = _joint([s_sample, t_runs[0][1][(src, n)]], lambda s, t: s / t)
                if worst is None or point > worst[1]:
                    worst = (src, point, lo, hi)
            src, point, lo, hi = worst
            return (f"{self.label(arm('xkd_z'))}: {src} @{top} tokens ({top // tml}x the transfer length), student / "
                    f"teacher perplexity {_fmt(point, '.3f')} {_ci(lo, hi, '.3f')} (the worse source)",
                    _band(lo, hi, LONGCTX_MARGIN, above=False))

        return self.finding("Long context (beyond the transfer length) survives XKD-z", variant,
                            "perplexity within a small margin of the teacher's at ~10x the XKD length",
                            f"ratio < {LONGCTX_MARGIN} (95% interval)", measure)

    def divergence_cost(self, ref: str, variant: str, init: str, *, trained: bool) -> Finding:
        """L3: the conversion of a more divergent family (``variant``, approximate) keeps less of its teacher's H6
        margin over chance than that of a family the mapping converts exactly (``ref``), both from the same
        mapping ``init`` -- the mapping alone, or (``trained``) after XKD-z from it at the matched budget."""
        r = self.run
        model = ("xkd_z" + ("" if init == self.train_init else f"@{init}")) if trained else f"init-{init}"
        chance = r.h6_chance(variant)
        cls = {v: r.conversion[(v, init)] for v in (ref, variant)}

        def measure(_: Arm) -> tuple[str, str]:
            samples = [r.h6_avg(ref, model), r.h6_avg(ref, "teacher"), r.h6_avg(variant, model),
                       r.h6_avg(variant, "teacher")]
            point, lo, hi = _joint(samples, lambda a, ta, b, tb: _share(a, ta, chance) - _share(b, tb, chance))
            kept = [_share(samples[i].value(), samples[i + 1].value(), chance) if samples[i] and samples[i + 1]
                    else math.nan for i in (0, 2)]
            return (f"{self.label(model)} keeps {_fmt(kept[0], '.2f')} of the teacher's margin over chance for "
                    f"{ref} ({cls[ref].get('family', 'orion')}, {cls[ref].get('exactness')}) vs {_fmt(kept[1], '.2f')} "
                    f"for {variant} ({cls[variant].get('family')}, {cls[variant].get('exactness')}); difference "
                    f"{_fmt(point, '+.2f')} {_ci(lo, hi, '+.2f')}", _strictly_positive(lo, hi))

        changed = sorted({d.get("module") for d in cls[variant].get("divergences") or [] if d.get("module")}
                         - {d.get("module") for d in cls[ref].get("divergences") or [] if d.get("module")})
        when = f"after {self.label(model)} at the matched budget" if trained else f"{self.label(model)} alone"
        toy, verdict = measure(PAPER)  # one arm: the alternatives of self.arms are other inits and corpora
        return Finding(
            f"Cost grows with divergence: the more divergent family keeps less of its teacher ({when})",
            f"{variant} vs {ref}",
            "cost grows with architectural divergence; OPM removes one module of divergence (L3; one pair tested)",
            toy, verdict,
            f"difference of the shares kept > 0 (95% interval); modules changed beyond {ref}'s: "
            f"{', '.join(changed) or 'none'}")

    # ---- the regime and the in / out-of-corpus split (issue 26) -------------------------------------------------
    def regime_test(self, variant: str) -> list[tuple[str, str, Callable[[], tuple[str, str]]]]:
        """The regime check of ``variant`` as an explanation test (none where the run has no control there):
        "agrees" (the explanation is supported) when Teacher + UT beats the teacher."""
        check = self.regime.get(variant)
        if check is None or not check.measured:
            return []

        def measure() -> tuple[str, str]:
            (d, lo, hi), (di, loi, hii), (m, mlo, mhi) = check.h6[None], check.h6["in"], check.mixture
            figure = (f"Teacher + UT - teacher: toy-H6 {_fmt(d, '+.2f')} {_ci(lo, hi, '+.2f')} (all items), "
                      f"{_fmt(di, '+.2f')} {_ci(loi, hii, '+.2f')} (in corpus); held-out mixture loss "
                      f"{_fmt(m, '+.4f')} {_ci(mlo, mhi, '+.4f')} nats/token")
            return figure, "agrees" if check.failures else "disagrees"

        return [("the regime check (Teacher + UT vs the teacher)", "regime", measure)]

    def keeps_out_of_corpus(self, variant: str, method: str, init: str) -> Finding:
        """L1/L4: what the transfer corpus never states survives XKD better than UT (out-of-corpus H6 items)."""
        r = self.run
        suffix = "" if init == self.train_init else f"@{init}"
        better, worse = method + suffix, "ut" + suffix

        def measure(_: Arm) -> tuple[str, str]:
            diff, p = _paired(r.h6_avg(variant, better, "out"), r.h6_avg(variant, worse, "out"))
            return (f"{self.label(better)} - {self.label(worse)} = {_fmt(diff, '+.2f')} H6 points on the "
                    f"out-of-corpus items, paired p = {_fmt(p, '.3g') if p is not None else 'nan'}",
                    _direction(diff, p, expected=1))

        return self.finding(
            f"{METHOD_LABEL[method]} keeps out-of-corpus knowledge better than UT (H6, from "
            f"{INIT_NAMES.get(init, init)})", variant,
            "the transfer corpus need not cover what the model knows: XKD keeps it, UT drifts (L1, L4)",
            "sign of the difference on the out-of-corpus items, paired sign-flip test p < 0.05", measure,
            self.regime_test(variant), arms=[])

    def control_forgets(self, variant: str) -> Finding:
        """UT forgets what its corpus never states, on the teacher itself: Teacher + UT against the teacher on the
        out-of-corpus items."""
        r = self.run

        def measure(_: Arm) -> tuple[str, str]:
            point, lo, hi = _joint([r.h6_avg(variant, CONTROL, "out"), r.h6_avg(variant, "teacher", "out")],
                                   lambda a, t: a - t)
            return (f"Teacher + UT - teacher = {_fmt(point, '+.2f')} {_ci(lo, hi, '+.2f')} H6 points on the "
                    "out-of-corpus items", _band(lo, hi, 0.0, above=False))

        return self.finding("UT forgets out-of-corpus knowledge (the teacher + UT)", variant,
                            "UT on a corpus that does not cover what the model knows drifts away from it (L1)",
                            "difference < 0 (95% interval)", measure, arms=[])

    def student_forgets(self, variant: str) -> Finding:
        """UT from OPM regains less of what the conversion destroyed on the out-of-corpus items than on the
        in-corpus ones (the in and out items resampled independently)."""
        r = self.run

        def shares(split: str, seed: int) -> tuple[float, np.ndarray] | None:
            samples = [r.h6_avg(variant, "ut", split), r.h6_avg(variant, "init-paper", split),
                       r.h6_avg(variant, "teacher", split)]
            if any(x is None for x in samples):
                return None
            u, o, t = (x.value() for x in samples)
            point = _share(u, t, o)
            reps = stats.joint_replicates(samples, seed=seed)
            return point, np.array([_share(u, t, o) for u, o, t in reps])

        def measure(_: Arm) -> tuple[str, str]:
            out, inn = shares("out", stats.SEED + 3), shares("in", stats.SEED + 4)
            if out is None or inn is None or self.train_init != "paper":
                return "–", "no data"
            lo, hi = stats.interval(out[1] - inn[1])
            return (f"{self.label('ut')} regains {_fmt(out[0], '.2f')} of what OPM lost on the out-of-corpus items vs "
                    f"{_fmt(inn[0], '.2f')} on the in-corpus items; difference {_fmt(out[0] - inn[0], '+.2f')} "
                    f"{_ci(lo, hi, '+.2f')}", _band(lo, hi, 0.0, above=False))

        return self.finding("UT forgets out-of-corpus knowledge (OPM + UT)", variant,
                            "UT on a corpus that does not cover what the model knows drifts away from it (L1)",
                            "share of OPM's loss regained, out-of-corpus minus in-corpus items < 0 (95% interval)",
                            measure, arms=[])

    # ---- the graft and the layer fit (issue 28) ---------------------------------------------------------------------
    KL_CRITERION = "sign of the paired KL difference over the held-out fidelity sequences, sign-flip test p < 0.05"

    def lower_kl(self, variant: str, init: str, base: str) -> MEASURE:
        """The measure of "``init`` starts closer to the teacher than ``base``": their KL before training
        (fidelity.json), paired over the same held-out fidelity sequences."""
        r = self.run

        def measure(_: Arm) -> tuple[str, str]:
            a, b = (r.fidelity.get((variant, i), {}).get("KL mean") for i in (init, base))
            diff, p = _paired(a, b)
            ratio = a.value() / b.value() if a is not None and b is not None and b.value() > 0 else math.nan
            return (f"KL before training {_fmt(a.value() if a else math.nan, '.4g')} ({self.label('init-' + init)}) "
                    f"vs {_fmt(b.value() if b else math.nan, '.4g')} ({self.label('init-' + base)}): "
                    f"{_fmt(ratio, '.2f')}x, paired p = {_fmt(p, '.3g') if p is not None else 'nan'} over the "
                    "held-out fidelity sequences", _direction(diff, p, expected=-1))

        return measure

    def graft_starts_closer(self, variant: str, init: str, mean: str) -> Finding:
        """A grafted init starts closer to the teacher than mean-pooling at the same G (:meth:`lower_kl`)."""
        g = parse_init(init)
        return self.finding(f"`{g.kv_init}` starts closer to the teacher than `mean` (GQA-{g.kv_heads}, KL before "
                            "training)", variant,
                            "aligning heads before merging them beats mean-pooling (Align Attention Heads Before "
                            "Merging Them; GQA's mean-pooling is the baseline)",
                            self.KL_CRITERION, self.lower_kl(variant, init, mean), arms=[])

    def graft_xkd_beats_ut(self, variant: str, method: str, init: str) -> Finding:
        """After a graft, XKD (``method``) beats UT from the same grafted init at the matched budget (H6, paired)."""
        r = self.run
        g = parse_init(init)
        better, worse = f"{method}@{init}", f"ut@{init}"

        def measure(_: Arm) -> tuple[str, str]:
            diff, p = _paired(r.h6_avg(variant, better), r.h6_avg(variant, worse))
            return (f"{self.label(better)} - {self.label(worse)} = {_fmt(diff, '+.2f')} H6 points, paired p = "
                    f"{_fmt(p, '.3g') if p is not None else 'nan'}", _direction(diff, p, expected=1))

        return self.finding(f"{METHOD_LABEL[method]} beats UT after a graft (GQA-{g.kv_heads}, from {g.kv_init})",
                            variant, "XKD recovers a modified architecture better than uptraining at a matched budget "
                            "(the paper's claim, here for MHA -> GQA; GQA itself uptrains)",
                            "sign of the paired H6 difference, sign-flip test p < 0.05", measure, arms=[])

    def layer_fit_cuts_kl(self, variant: str, init: str, base: str) -> Finding:
        """The layer-wise fit brings an approximate conversion closer to its teacher before training than the same
        mapping without it (:meth:`lower_kl`)."""
        return self.finding("The layer-wise fit cuts an approximate family's KL before training", variant,
                            "refitting the linear maps around a module the target cannot hold reduces the residual "
                            "XKD must absorb (§8: OPM extended to other module pairs)",
                            self.KL_CRITERION, self.lower_kl(variant, init, base), arms=[])

    def pilot(self, variant: str) -> Finding:
        recs = self.run.pilot[variant]
        first, last = recs[0], recs[-1]

        def measure(_: Arm) -> tuple[str, str]:
            cos = [float(c) for c in last.get("cos", [])]
            mean = number(last, "cos_mean", path=f"pilot {variant}")
            spread = f"; norm sites {min(cos):.2f}-{max(cos):.2f}" if cos else ""
            verdict = "agrees" if mean >= PILOT_COS and mean > first["cos_mean"] else "disagrees"
            return (f"mean cos(g, gamma) {first['cos_mean']:.2f} -> {mean:.2f} after {last['step']} steps{spread} "
                    "(one run)", verdict)

        return self.finding("Pilot: learnt RMSNorm weights converge toward gamma", variant,
                            "the trained weights converge toward gamma (Appendix A)",
                            f"final mean cosine >= {PILOT_COS} and rising", measure)


FORMAT_LABEL = {"orion": "Orion", "llama3": "Llama-3"}
METHOD_LABEL = {"ut": "UT", "xkd_h": "XKD-h", "xkd_z": "XKD-z"}


def collect_findings(items: list[Item], *, train_init: str, splits: bool = False,
                     arm_explanations: dict[str, str] | None = None) -> list[Finding]:
    """Every claim the run has the data for, in the paper's order (a claim whose models the run lacks is left
    out). ``splits``: the H6 items carry the in / out-of-corpus tag (the toy suites), so the split's claims run;
    ``arm_explanations``: the explanation each ablation corpus tests (corpus name -> key of EXPLANATIONS)."""
    run = RunResults(items)
    c = Checker(run, train_init=train_init, arm_explanations=arm_explanations)
    rows: list[Finding] = []
    h6_variants = run.variants(run.h6)
    mt_variants = list(dict.fromkeys(k[0] for k in run.mt))
    fmts = [f for f in ("orion", "llama3") if any(k[2] == f and k[1] != "teacher" for k in run.mt)]
    for v in h6_variants:
        rows.append(c.opm_collapse(v))
    for v in mt_variants:
        rows += [c.opm_floor(v, fmt) for fmt in fmts]
    for v in h6_variants:
        rows.append(c.xkd_recovers(v))
    for v in mt_variants:
        rows += [c.xkd_recovers_mt(v, fmt) for fmt in fmts]
    for v in h6_variants:
        rows += [c.ordering(v, "xkd_h", "ut", metric="h6"), c.ordering(v, "xkd_z", "xkd_h", metric="h6"),
                 c.ordering(v, "xkd_z", "ut", metric="h6")]
    for v in mt_variants:
        rows += [c.ordering(v, "xkd_z", "ut", metric="mt", fmt=fmt) for fmt in fmts]
    if splits:
        for v in h6_variants:
            rows += [c.keeps_out_of_corpus(v, m, i) for i in [train_init] + c.inits for m in ("xkd_z", "xkd_h")]
        for v in h6_variants:
            rows += [c.control_forgets(v), c.student_forgets(v)]
    for v in [v for v in mt_variants if v in h6_variants]:
        rows += [c.generative_gap(v, fmt) for fmt in fmts]
    for v in run.variants(run.code):
        rows.append(c.code_survives(v))
    for v in run.variants(run.longctx):
        found = c.longctx_survives(v)
        if found is not None:
            rows.append(found)
    for v in run.pilot:
        rows.append(c.pilot(v))
    rows += divergence_rows(run, c)
    rows += graft_rows(run, c)
    return [r for r in rows if r.verdict != "no data"]  # claims whose models this run did not evaluate


EXACT_CLASSES = ("exact", "exact up to a logit offset")


def divergence_rows(run: RunResults, c: Checker) -> list[Finding]:
    """The divergence claim (L3) for every approximate variant against the first variant the same mapping converts
    exactly, from the family's best mapping in the run (``exact`` where trained from, else ``train.init``): the
    mapping alone, then after XKD-z from it."""
    inits = {i for (_, i) in run.conversion}
    init = "exact" if "exact" in inits else c.train_init
    by_class = {v: conv.get("exactness") for (v, i), conv in run.conversion.items() if i == init}
    refs = [v for v, cls in by_class.items() if cls in EXACT_CLASSES]
    rows = []
    for v in [v for v, cls in by_class.items() if cls == "approximate"]:
        for ref in refs[:1]:
            rows += [c.divergence_cost(ref, v, init, trained=False), c.divergence_cost(ref, v, init, trained=True)]
    return rows


def graft_rows(run: RunResults, c: Checker) -> list[Finding]:
    """The graft's claims (issue 28) per variant and G: each init other than ``mean`` against ``mean`` before
    training (where the run has both fidelity files), then XKD-z and XKD-h against UT from each grafted init; and
    each layer-fitted init against the same mapping without the fit, before training."""
    rows = []
    for (v, name) in run.fidelity:
        g = parse_init(name)
        mean = f"{g.norm}-kv{g.kv_heads}-mean"
        if g.kv_heads is not None and g.kv_init != "mean" and not g.layer_fit and (v, mean) in run.fidelity:
            rows.append(c.graft_starts_closer(v, name, mean))
        base = replace(g, layer_fit=False).name
        if g.layer_fit and (v, base) in run.fidelity:
            rows.append(c.layer_fit_cuts_kl(v, name, base))
    grafted = sorted({(v, t.init) for (v, m) in run.h6 for t in [parse_trained(m)]
                      if t is not None and t.init and parse_init(t.init).kv_heads is not None})
    for v, init in grafted:
        rows += [c.graft_xkd_beats_ut(v, method, init) for method in ("xkd_z", "xkd_h")]
    return rows


def findings_markdown(rows: list[Finding], *, header: str = "") -> str:
    """The claims table, then the explanations and the table of their tests."""
    import pandas as pd

    frame = pd.DataFrame([{"Claim (paper)": r.claim, "Variant": r.variant, "Paper": r.paper,
                           "This run (95% interval)": r.toy, "Verdict": r.verdict, "Criterion": r.criterion}
                          for r in rows])
    out = [header.rstrip() + "\n\n"] if header else []
    out.append(frame.to_markdown(index=False) + "\n")
    tests = [(r, t) for r in rows for t in r.tests]
    if tests:
        keys = list(dict.fromkeys(t.explanation for _, t in tests))
        out.append("\n## Explanations tested\n\nFor every claim this run does not reproduce (or cannot separate), the "
                   "same measurement on the alternatives of the run, judged by the claim's own criterion: the "
                   "explanation is *supported* when the claim holds there, *not supported* when it fails there too, "
                   "*inconclusive* when the interval straddles the criterion.\n\n")
        out += [f"- **{k}**: {EXPLANATIONS[k]}.\n" for k in keys]
        table = pd.DataFrame([{"Claim (paper)": r.claim, "Variant": r.variant, "Verdict": r.verdict,
                               "Explanation": t.explanation, "Test": t.arm, "This run (95% interval)": t.figure,
                               "Verdict there": t.verdict, "Explanation is": t.outcome} for r, t in tests])
        out.append("\n" + table.to_markdown(index=False) + "\n")
    return "".join(out)


HEADER = """# Findings: the paper's claims against this run

Generated by the rule `report_findings` (kept.report.findings) from the results of the run; do not edit by hand.
Intervals are 95% paired-bootstrap percentile intervals over the evaluation's units ({iters} resamples: items of
all H6 tasks, MT-Bench questions, code-probe items, long-context documents); orderings use a paired sign-flip
permutation test over the same units. A row pools all training seeds of each student. Thresholds: collapse =
keeps < {collapse} of the teacher's margin over chance (H6) or the floor (MT-Bench); recovers = regains >= {recover}
of what OPM lost; survives = keeps >= {survive} of the teacher's code accuracy, or perplexity within
{margin:.0%} of the teacher's. "not separable": the interval straddles the criterion. Out-of-corpus items: the
toy suites' items whose fact the transfer corpus never states (corpus.coverage; with GSM8K and the vocabulary
questions, which no corpus document states either); the regime check (Teacher + UT against the teacher) is the
regime table (results/report/tables/regime.md).
"""


def write_findings(*, items: list[Item], md: str | Path, train_init: str, splits: bool = False,
                   arm_explanations: dict[str, str] | None = None) -> list[Finding]:
    """Compute every finding, then write the Markdown page atomically."""
    rows = collect_findings(items, train_init=train_init, splits=splits, arm_explanations=arm_explanations)
    if not rows:
        raise KeptError("findings: the run has none of the results the claims need")
    text = findings_markdown(rows, header=HEADER.format(iters=stats.BOOTSTRAP_ITERS, collapse=COLLAPSE,
                                                        recover=RECOVER, survive=SURVIVE, margin=LONGCTX_MARGIN - 1))
    with atomic_file(md, "w", encoding="utf-8") as fh:
        fh.write(text)
    return rows


__all__ = ["Finding", "collect_findings", "findings_markdown", "write_findings"]
