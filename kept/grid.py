"""Names of the trained students of the grid: method x init x transfer corpus x seed in one path component.

A trained student is ``{method}[@{init}][+{corpus}][-parity][.s{seed}]`` (docs/architecture.md, "Models of the
grid"):

- ``@{init}`` only when it starts from another mapping than the primary one (``train.init``'s first entry),
- ``+{corpus}`` only for an ablation corpus (``corpus.ablations``; the transfer corpus has no suffix),
- ``-parity`` for the fast path (``train.fast``): the run stops once its held-out KL to the teacher reaches the
  target (kept.train.parity), so it is not at the matched budget of the grid,
- ``.s{seed}`` only for another seed than the primary one (``train.seeds``' first entry).

A grafted init (issue 28: MHA -> GQA, ``variants.<name>.convert.kv_heads``) is named ``{norm}-kv{G}-{kv_init}``
(:func:`graft_init`): the norm mapping it is converted with, the KV heads it keeps and the closed-form init of the
merged heads, e.g. ``exact-kv2-fit``; its model is ``results/{variant}/init-exact-kv2-fit/model`` and its students
``xkd_z@exact-kv2-fit``. A layer-fitted init (``variants.<name>.convert.layer_fit``: the linear maps around the
modules stock Llama cannot hold refitted on calibration text) adds ``-lfit``: ``paper-lfit``.

So with the default settings the names are the plain method names (``xkd_z``), and the paths of the primary
runs read as before (``results/base/xkd_z/model``); ``xkd_z@exact``, ``ut+broad`` and ``xkd_z.s1235`` are their
siblings. The workflow (rules/common.smk) and the report both parse names with :func:`parse`.

One name is not a student: ``ut@teacher`` (:data:`CONTROL`), the regime control ``Teacher + UT``: the teacher
itself, in its own architecture (no conversion), trained with UT's settings on the transfer corpus at the matched
budget. It answers "can the transfer budget still teach the teacher?" (kept.report.regime); it is no arm of any
claim and no contender in the tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kept.errors import ConfigError

METHODS = ("ut", "xkd_h", "xkd_z")
TEACHER_INIT = "teacher"  # the init of the regime control: the unconverted teacher
KV_INITS = ("mean", "aligned", "fit")  # kept.convert.graft.KV_INITS (tests/test_graft.py holds the two in step)
LAYER_FIT = "-lfit"
_INIT = (r"(?P<norm>[A-Za-z0-9]+)(?:-kv(?P<kv_heads>[1-9][0-9]*)-(?P<kv_init>" + "|".join(KV_INITS) + r"))?"
         + f"(?P<lfit>{LAYER_FIT})?")
_NAME = re.compile(r"^(?P<method>ut|xkd_h|xkd_z)(?:@(?P<init>" + re.sub(r"\(\?P<\w+>", "(?:", _INIT) + r"))?(?:\+(?P<corpus>[A-Za-z0-9]+))?"
                   r"(?P<stop>-parity)?(?:\.s(?P<seed>\d+))?$")


@dataclass(frozen=True)
class Trained:
    """One trained student: ``init`` None = the primary init, ``corpus`` None = the transfer corpus, ``seed``
    None = the primary seed."""

    method: str
    init: str | None = None
    corpus: str | None = None
    seed: int | None = None
    stop: bool = False  # stopped at parity (the fast path), not the grid's matched budget

    @property
    def name(self) -> str:
        out = self.method
        if self.init is not None:
            out += f"@{self.init}"
        if self.corpus is not None:
            out += f"+{self.corpus}"
        if self.stop:
            out += "-parity"
        if self.seed is not None:
            out += f".s{self.seed}"
        return out

    @property
    def control(self) -> bool:
        """The regime control (Teacher + UT), not a student of the grid."""
        return self.init == TEACHER_INIT

    @property
    def row(self) -> str:
        """The name without its seed: the table row that pools this student's seeds."""
        return Trained(self.method, self.init, self.corpus, stop=self.stop).name


def trained(method: str, *, init: str, corpus: str | None, seed: int, primary_init: str,
            primary_seed: int, stop: bool = False) -> Trained:
    """The student trained with ``method`` from ``init`` on ``corpus`` with ``seed``, named relative to the
    primary init and seed."""
    if method not in METHODS:
        raise ConfigError(f"train method {method!r}: expected one of {METHODS}")
    if init == TEACHER_INIT and method != "ut":
        raise ConfigError(f"train method {method!r} from the teacher itself: only UT (the regime control) starts "
                          "there; distilling a teacher into itself has nothing to learn")
    return Trained(method, None if init == primary_init else init, corpus,
                   None if seed == primary_seed else int(seed), stop)


def parse(name: str) -> Trained | None:
    """The :class:`Trained` of a grid model name, or None for the teacher and the untrained inits."""
    m = _NAME.match(name)
    if m is None:
        return None
    seed = m.group("seed")
    return Trained(m.group("method"), m.group("init"), m.group("corpus"), int(seed) if seed else None,
                   m.group("stop") is not None)


@dataclass(frozen=True)
class Init:
    """One init of the grid: a norm mapping, grafted to ``kv_heads`` KV heads with ``kv_init`` (None: no graft),
    with the layer fit where ``layer_fit``."""

    norm: str
    kv_heads: int | None = None
    kv_init: str | None = None
    layer_fit: bool = False

    @property
    def name(self) -> str:
        out = self.norm if self.kv_heads is None else f"{self.norm}-kv{self.kv_heads}-{self.kv_init}"
        return out + (LAYER_FIT if self.layer_fit else "")


def graft_init(norm: str, kv_heads: int, kv_init: str) -> str:
    """The init name of ``norm`` grafted to ``kv_heads`` KV heads with ``kv_init`` (``exact-kv2-fit``)."""
    if kv_init not in KV_INITS:
        raise ConfigError(f"kv init {kv_init!r}: expected one of {KV_INITS}")
    return Init(norm, int(kv_heads), kv_init).name


def parse_init(name: str) -> Init:
    """The :class:`Init` of an init name: a grafted one (``exact-kv2-fit``), a layer-fitted one (``paper-lfit``) or
    a plain norm mapping."""
    m = re.fullmatch(_INIT, name)
    if m is None:
        return Init(name)
    kv = m.group("kv_heads")
    return Init(m.group("norm"), int(kv) if kv else None, m.group("kv_init"), m.group("lfit") is not None)


CONTROL = Trained("ut", TEACHER_INIT).name  # "ut@teacher"


def is_control(model: str) -> bool:
    """Whether a grid model name is the regime control (Teacher + UT)."""
    t = parse(model)
    return t is not None and t.control


def row_name(model: str) -> str:
    """The table row of a grid model: trained students lose their seed suffix, other models are unchanged."""
    t = parse(model)
    return t.row if t is not None else model
