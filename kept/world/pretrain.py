"""Pretrain the toy teachers through the shared trainer (``kept.train``, objective "ut"), in Orion's format or, with
``family`` set, as a model of another source family (olmo, stablelm, gpt_neox, phi, qwen2, qwen3, falcon:
transformers' own class of the family, written with its ``save_pretrained``, the family's on-disk layout) on the same
world text, tokenizer and budget, so that differences between families come from the architecture alone.

- base: a fresh Orion model (LayerNorm with bias) trained on a mixture of all world domains;
- chat: base, marked with Orion's chat format, further trained mostly on dialogues;
- longchat: base with a longer ``max_position_embeddings`` and a larger ``rope_theta``, further trained mostly on
  long documents at a longer sequence length.

Regime shaping (base only, see docs/toy-world.md): real LLMs carry a strong mean component in the residual stream
and non-trivial LayerNorm biases, which is what makes the paper's OPM (g = gamma, beta dropped, no centring)
lossy. A toy trained for minutes develops neither, so the base teacher starts with a shared offset added to every
embedding row (``embed_offset``: a constant in every channel, a pure mean component that every LayerNorm removes,
so it costs the teacher nothing) and LayerNorm biases drawn from N(0, ``norm_bias_std``^2); the trainer does not
decay biases, so they stay. The same shaping applies to every family (OLMo's LayerNorm has no parameters: only the
offset).

Non-Orion families are base teachers only (no chat format of their own in the toy world); ``family_options`` are
extra keyword arguments of the family's config class over :data:`FAMILY_DEFAULTS` (``partial_rotary_factor`` goes
into ``rope_parameters`` with ``rope_theta``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from kept.atomic import atomic_file, remove_output
from kept.chat import encode_with_specials
from kept.corpus import document_text, file_sha256, pack
from kept.errors import ConfigError, KeptError
from kept.orion import load_teacher, new_orion_model, save_orion_checkpoint
from kept.jsonl import read_jsonl
from kept.world.render import DOMAINS

ROLES = ("base", "chat", "longchat")
FAMILIES = ("orion", "olmo", "stablelm", "gpt_neox", "phi", "qwen2", "qwen3", "falcon")
# transformers' config and model classes of each HF family (as kept.convert.tiny), and the options the toy teachers
# use unless family_options overrides them: each family's own published defaults for the choices that matter to the
# conversion (gpt_neox: parallel residual, partial rotary 0.25, GELU; stablelm: sequential, partial rotary 0.25,
# no qkv bias; phi: partial rotary 0.5, gelu_new; olmo: bias-free, non-parametric LayerNorm, SwiGLU)
FAMILY_CLASSES = {"olmo": ("OlmoConfig", "OlmoForCausalLM"), "stablelm": ("StableLmConfig", "StableLmForCausalLM"),
                  "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"), "phi": ("PhiConfig", "PhiForCausalLM"),
                  "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                  "falcon": ("FalconConfig", "FalconForCausalLM")}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "olmo": {"hidden_act": "silu", "clip_qkv": None},
    "stablelm": {"partial_rotary_factor": 0.25, "use_parallel_residual": False, "use_qkv_bias": False,
                 "qk_layernorm": False, "hidden_act": "silu"},
    "gpt_neox": {"partial_rotary_factor": 0.25, "use_parallel_residual": True, "hidden_act": "gelu"},
    "phi": {"partial_rotary_factor": 0.5, "hidden_act": "gelu_new"},
    # the zoo (issue 27): Qwen2 (RMSNorm, q/k/v biases: exact), Qwen3 (per-head q/k RMSNorms: approximate), Falcon-7B
    # (multi-query attention in a parallel block under one shared LayerNorm, GELU: approximate)
    "qwen2": {"hidden_act": "silu", "use_sliding_window": False},
    "qwen3": {"hidden_act": "silu", "use_sliding_window": False},
    "falcon": {"multi_query": True, "parallel_attn": True, "new_decoder_architecture": False, "bias": False,
               "activation": "gelu"},
}


@dataclass
class PretrainConfig:
    """One toy teacher."""

    role: str  # "base" | "chat" | "longchat"
    world: str  # world directory (text/{domain}.jsonl)
    tokenizer: str  # tokenizer.model
    output: str  # teacher directory (Orion format)
    work_dir: str  # packed pretraining data, initial checkpoint, train log
    train_log: str | None = None  # a copy of the run's train_log.jsonl (the regime table reads its final slope)
    init_from: str | None = None  # the base teacher (chat, longchat)
    family: str = "orion"  # FAMILIES: the architecture and on-disk layout of the teacher
    family_options: dict[str, Any] = field(default_factory=dict)  # config kwargs over FAMILY_DEFAULTS[family]
    # architecture (base; chat keeps base's, longchat changes only the two rope/position keys)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    # regime shaping (base)
    embed_offset: float = 0.0  # constant added to every channel of every embedding row
    norm_bias_std: float = 0.0  # std of the LayerNorm bias init
    # data: domain -> share of the token budget (steps * batch_size * seq_len)
    mixture: dict[str, float] = field(default_factory=lambda: {"passages": 0.3, "quiz": 0.45, "dialogue": 0.1,
                                                               "code": 0.1, "longdoc": 0.05})
    seq_len: int = 512
    # optimisation (AdamW with weight decay, cosine schedule, through kept.train)
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"pretrain: role {self.role!r} must be one of {ROLES}")
        if self.family not in FAMILIES:
            raise ConfigError(f"pretrain: family {self.family!r} must be one of {FAMILIES}")
        if self.family != "orion" and self.role != "base":
            raise ConfigError(f"pretrain: family {self.family!r} teachers are base teachers only (role "
                              f"{self.role!r} needs family 'orion')")
        if self.family == "orion" and self.family_options:
            raise ConfigError(f"pretrain: family_options {sorted(self.family_options)} apply to HF families only, "
                              "not to family 'orion'")
        if self.role != "base" and not self.init_from:
            raise ConfigError(f"pretrain: role {self.role!r} needs init_from (the base teacher)")
        unknown = sorted(set(self.mixture) - set(DOMAINS))
        if unknown:
            raise ConfigError(f"pretrain: mixture names unknown domain(s) {unknown}; known: {list(DOMAINS)}")
        if not self.mixture or any(v < 0 for v in self.mixture.values()) or sum(self.mixture.values()) <= 0:
            raise ConfigError(f"pretrain: mixture {self.mixture} must have non-negative shares summing to > 0")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"pretrain: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.seq_len > self.max_position_embeddings and self.role != "chat":
            raise ConfigError(f"pretrain: seq_len {self.seq_len} exceeds max_position_embeddings "
                              f"{self.max_position_embeddings}")


def _documents(path: Path, domain: str, encode: Any, seed: int) -> Iterator[tuple[str, list[int]]]:
    """Token ids of a domain's documents, shuffled, endlessly; chat specials become their ids."""
    records = read_jsonl(path, what=f"documents in domain {domain!r}")
    ids = [encode(document_text(r) if domain == "passages" else r["text"]) for r in records]
    langs = [r.get("lang", "") for r in records]
    rng = random.Random(f"{seed}:{domain}")
    while True:
        order = list(range(len(ids)))
        rng.shuffle(order)
        for i in order:
            yield langs[i], ids[i]


def pack_mixture(*, text_dir: str | Path, tokenizer: str | Path, mixture: dict[str, float], seq_len: int,
                 sequences: int, seed: int, output: str | Path, source: str) -> dict[str, Any]:
    """Pack a domain mixture of the world text under ``text_dir`` (``{domain}.jsonl``) into exactly ``sequences``
    rows of ``seq_len`` tokens, each domain's share of the tokens as ``mixture`` says."""
    from kept.world.tokenizer import load_sp

    sp = load_sp(tokenizer)
    specials = {"<s>": sp.bos_id(), "</s>": sp.eos_id()}

    def encode(text: str) -> list[int]:
        return encode_with_specials(text, sp.encode, specials)

    total = sequences * seq_len
    shares = {d: s for d, s in mixture.items() if s > 0}
    norm = sum(shares.values())
    budgets = {d: int(total * s / norm) for d, s in shares.items()}
    first = sorted(budgets)[0]
    budgets[first] += total - sum(budgets.values())  # exact multiple of seq_len: no padded row
    docs = {d: _documents(Path(text_dir) / f"{d}.jsonl", d, encode, seed) for d in budgets}
    return pack(documents=docs, budgets=budgets, output=output, max_length=seq_len, eos_id=sp.eos_id(),
                seed=seed, manifest_extra={"source": source, "tokenizer_sha256": file_sha256(tokenizer)})


def pack_pretraining(cfg: PretrainConfig, output: Path) -> dict[str, Any]:
    """Pack the variant's domain mixture into a corpus of exactly ``steps * batch_size`` sequences."""
    return pack_mixture(text_dir=Path(cfg.world) / "text", tokenizer=cfg.tokenizer, mixture=cfg.mixture,
                        seq_len=cfg.seq_len, sequences=cfg.steps * cfg.batch_size, seed=cfg.seed, output=output,
                        source=f"world:{cfg.role}-pretraining")


def shape_regime(model: torch.nn.Module, *, embed_offset: float, norm_bias_std: float, seed: int) -> None:
    """Give a fresh model a residual-stream mean component and non-zero LayerNorm biases (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(embed_offset)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * norm_bias_std)


def new_family_model(cfg: PretrainConfig, *, vocab_size: int, special_ids: dict[str, int | None]) -> torch.nn.Module:
    """A fresh float32 model of ``cfg.family`` (transformers' own classes) at the recipe's sizes."""
    import transformers

    cfg_name, model_name = FAMILY_CLASSES[cfg.family]
    cfg_cls, model_cls = getattr(transformers, cfg_name), getattr(transformers, model_name)
    options = {**FAMILY_DEFAULTS[cfg.family], **cfg.family_options}
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if "partial_rotary_factor" in options:
        rope["partial_rotary_factor"] = float(options.pop("partial_rotary_factor"))
    known = set(cfg_cls().to_dict())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"pretrain: family_options {unknown} are not {cfg_name} settings")
    sizes = {"ffn_hidden_size" if "ffn_hidden_size" in known else "intermediate_size": cfg.intermediate_size}
    if "head_dim" in known and "head_dim" not in options and cfg_name != "FalconConfig":  # Qwen3's default is 128
        sizes["head_dim"] = cfg.hidden_size // cfg.num_heads
    config = cfg_cls(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
                     rope_parameters=rope, tie_word_embeddings=False, **sizes, **special_ids, **options)
    if "num_key_value_heads" in known and "num_key_value_heads" not in options:
        config.num_key_value_heads = cfg.num_heads
    torch.manual_seed(cfg.seed)
    return model_cls(config).float()


def initial_family_checkpoint(cfg: PretrainConfig, out: Path, *, vocab_size: int) -> Path:
    """A fresh shaped model of an HF family, in its own layout (``save_pretrained``), with the world's tokenizer
    (``tokenizer.json`` + ``tokenizer.model`` + ``tokenizer_config.json``, :func:`kept.tokenizer.write_tokenizer`)."""
    from kept.atomic import atomic_dir
    from kept.tokenizer import write_tokenizer
    from kept.world.tokenizer import load_sp

    sp = load_sp(cfg.tokenizer)
    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(),
           "pad_token_id": sp.pad_id() if sp.pad_id() >= 0 else None}
    model = new_family_model(cfg, vocab_size=vocab_size, special_ids=ids)
    shape_regime(model, embed_offset=cfg.embed_offset, norm_bias_std=cfg.norm_bias_std, seed=cfg.seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_tokenizer(model_file=cfg.tokenizer, output=tmp, model_max_length=cfg.max_position_embeddings)
    return out


def initial_checkpoint(cfg: PretrainConfig, out: Path, *, vocab_size: int) -> Path:
    """The starting point of the run, in Orion format: a fresh shaped model (base) or the base teacher
    (chat: same weights, chat format; longchat: same weights, new position settings)."""
    chat = cfg.role in ("chat", "longchat")
    if cfg.role == "base":
        orion_cfg = {"vocab_size": vocab_size, "hidden_size": cfg.hidden_size,
                     "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
                     "num_attention_heads": cfg.num_heads, "max_position_embeddings": cfg.max_position_embeddings,
                     "rope_theta": cfg.rope_theta}
        torch.manual_seed(cfg.seed)
        model = new_orion_model(orion_cfg)
        shape_regime(model, embed_offset=cfg.embed_offset, norm_bias_std=cfg.norm_bias_std, seed=cfg.seed)
    else:
        base = load_teacher(cfg.init_from, dtype=torch.float32)
        if base.config.vocab_size != vocab_size:
            raise KeptError(f"{cfg.init_from}: vocab_size {base.config.vocab_size} != tokenizer's {vocab_size}")
        if cfg.role == "chat":
            model = base
        else:
            from kept.orion import orion_config_dict

            orion_cfg = orion_config_dict(base, max_position_embeddings=cfg.max_position_embeddings,
                                          rope_theta=cfg.rope_theta)
            model = new_orion_model(orion_cfg)
            model.load_state_dict(base.state_dict(), strict=True)
    return save_orion_checkpoint(model, out, tokenizer_model=cfg.tokenizer, num_shards=1, chat=chat)


def pretrain_teacher(cfg: PretrainConfig) -> dict[str, Any]:
    """Pack the data, build the initial checkpoint and train it with ``kept.train`` (UT; Orion export, or the
    family's own layout)."""
    from kept.train import TrainConfig, train
    from kept.world.tokenizer import load_sp

    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    vocab = load_sp(cfg.tokenizer).get_piece_size()
    manifest = pack_pretraining(cfg, work / "data")
    if cfg.family == "orion":
        init = initial_checkpoint(cfg, work / "init", vocab_size=vocab)
    else:
        init = initial_family_checkpoint(cfg, work / "init", vocab_size=vocab)
    summary = train(TrainConfig(
        objective="ut", student=str(init), corpus=str(work / "data"), output=cfg.output,
        work_dir=str(work / "train"), steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
        min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        seed=cfg.seed, export_format="orion" if cfg.family == "orion" else "source", num_shards=2, log_every=10,
        kl_recompute=False, kl_chunk_size=4096,  # fewer LM-head matmuls; the (V, d) buffer is tiny here
    ))
    summary["tokens_per_group"] = manifest["tokens_per_group"]
    (work / "pretrain_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if cfg.train_log:
        with atomic_file(cfg.train_log, "w", encoding="utf-8") as fh:
            fh.write((work / "train" / "train_log.jsonl").read_text(encoding="utf-8"))
    remove_output(work / "data")  # reproducible from the world; not an output
    remove_output(init)
    return summary
