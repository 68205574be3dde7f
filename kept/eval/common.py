"""Shared pieces of the evaluation stage: loading a grid model, reading JSON lines, batched generation and
token negative log-likelihoods on any model of the grid (Orion teacher runtime or stock Llama)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from kept.errors import KeptError
from kept.jsonl import read_jsonl  # noqa: F401 - re-exported: the eval modules import it from here

log = logging.getLogger(__name__)


def require_keys(row: dict[str, Any], keys: Iterable[str], *, where: str) -> None:
    """Raise a KeptError naming ``where`` and the first missing key."""
    for key in keys:
        if key not in row:
            raise KeptError(f"{where}: missing key {key!r}")


@dataclass
class LoadedModel:
    """A grid model and its tokenizer, ready for evaluation."""

    model: Any
    tokenizer: Any
    directory: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return int(eos if eos is not None else self.model.config.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_chat(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt: ``<s>``/``</s>`` strings become the special ids."""
        from kept.chat import encode_with_specials

        specials = {}
        for tok, tid in ((self.tokenizer.bos_token, self.tokenizer.bos_token_id),
                         (self.tokenizer.eos_token, self.tokenizer.eos_token_id)):
            if tok is not None and tid is not None:
                specials[tok] = int(tid)
        return encode_with_specials(text, self.encode, specials)


def load_eval_model(directory: str | Path, *, dtype: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load any grid model the same way: :func:`kept.models.load_model` + :func:`kept.models.load_tokenizer`."""
    from kept.models import load_model, load_tokenizer

    directory = str(directory)
    if not Path(directory).is_dir():
        raise KeptError(f"{directory}: model directory does not exist")
    model = load_model(directory, dtype=dtype, device=device)
    model.eval()
    tokenizer = load_tokenizer(directory)
    return LoadedModel(model=model, tokenizer=tokenizer, directory=directory)


def left_pad(seqs: Sequence[Sequence[int]], *, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for ``seqs``, padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
    progress: Any = None,
) -> list[list[int]]:
    """New token ids for each prompt (EOS and anything after it removed). Greedy when ``temperature`` is
    below 1e-4 (as FastChat), otherwise sampling at ``temperature``. Prompts run in left-padded batches; a
    prompt longer than the model's context leaves room for ``max_new_tokens`` by dropping its oldest tokens.
    ``progress`` (a :class:`kept.progress.Progress`) counts the prompts done."""
    limit = lm.max_positions
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = [list(p) for p in prompts[start:start + batch_size]]
        if limit:
            keep = max(1, limit - max_new_tokens)
            for i, p in enumerate(batch):
                if len(p) > keep:
                    log.warning("prompt %d has %d tokens; keeping the last %d (context %d, max_new_tokens %d)",
                                start + i, len(p), keep, limit, max_new_tokens)
                    batch[i] = p[-keep:]
        ids, mask = left_pad(batch, pad_id=lm.pad_id, device=lm.device)
        sample = temperature >= 1e-4
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            kwargs.update(temperature=float(temperature), top_p=1.0, top_k=0)
            torch.manual_seed(seed + start)
        gen = lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=lm.eos_id,
            pad_token_id=lm.pad_id,
            **kwargs,
        )
        for row in gen[:, ids.shape[1]:].tolist():
            if lm.eos_id in row:
                row = row[: row.index(lm.eos_id)]
            out.append(row)
        if progress is not None:
            progress.update(len(batch))
    return out


@torch.inference_mode()
def sequence_nll(lm: LoadedModel, ids: Sequence[int], *, chunk: int = 4096) -> torch.Tensor:
    """Per-token negative log-likelihoods (float64, length ``len(ids) - 1``) of ``ids[1:]`` given the prefix.

    The decoder runs once over the whole sequence; the vocabulary projection runs in chunks of positions, so
    a long input never materialises its full ``(T, V)`` logits.
    """
    if len(ids) < 2:
        raise KeptError("sequence_nll needs at least two tokens")
    x = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)  # (1, T)
    hidden = lm.model.base_model(input_ids=x, use_cache=False).last_hidden_state[0]  # (T, H), after the final norm
    head = lm.model.get_output_embeddings()
    targets = x[0, 1:]  # (T-1,)
    nll = []
    for s in range(0, targets.shape[0], chunk):
        e = min(s + chunk, targets.shape[0])
        logits = head(hidden[s:e]).float()  # (c, V): position p predicts token p + 1
        nll.append(torch.nn.functional.cross_entropy(logits, targets[s:e], reduction="none"))
    return torch.cat(nll).double().cpu()
