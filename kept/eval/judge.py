"""MT-Bench judging in FastChat's single-answer grading mode, through any OpenAI-compatible endpoint.

Turn 1 is judged with ``single-v1`` (``single-math-v1`` with the reference answer for math, reasoning and
coding), turn 2 with the ``-multi-turn`` forms, at temperature 0, as FastChat's ``gen_judgment`` does. The score
is parsed from ``[[x]]`` (``[x]`` as fallback); a reply without a score, or a call that fails after its
retries, is recorded with score -1 and an ``error`` field (FastChat's "no rating" marker, which its
``show_result`` leaves out) — never a made-up score. Judgments are written in FastChat's judgment format.

The toy world's rubric judge plugs in at the same interface (:class:`ToyBackend`): it returns a reply text with
``[[x]]`` that goes through the same parser. The API key is passed in by the caller (read from an
environment variable whose *name* is configured) and registered with :data:`REDACT`, the one redaction point:
every judge message, exception text, log line and written record passes through it (the key itself, its URL- and
JSON-escaped forms, ``Bearer`` tokens, credentials in URLs), whatever the endpoint echoes back on any status.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from kept.errors import ConfigError, KeptError
from kept.eval.mtbench_data import load_prompts, load_references
from kept.progress import Progress

log = logging.getLogger(__name__)

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")
_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


class JudgeError(KeptError):
    """The judge endpoint refused the request in a way retrying cannot fix (bad key, unknown model, ...)."""


_URL_SECRET = re.compile(r"(?i)([?&;](?:api[-_]?key|key|token|access[-_]?token|secret|sig|signature|password)=)"
                         r"[^&;#\s\"']+")
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/@\s:]*:)[^@/\s]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


class Redactor(logging.Filter):
    """Removes the judge's secrets from text. Used as a function on every message, exception text and record the
    judge writes, and as a logging filter on the judge's logger and on the root handlers of a judge job, so no log
    line escapes it. Secrets are registered with :meth:`add`; credentials in URLs and ``Bearer``/``Basic``
    tokens are removed whether registered or not."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
                 json.dumps(secret)[1:-1]}
        with self._lock:
            self._secrets |= {f for f in forms if f}

    def __call__(self, text: Any) -> str:
        text = str(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        text = _URL_USERINFO.sub(r"\1***@", text)
        text = _URL_SECRET.sub(r"\1***", text)
        return _BEARER.sub(r"\1 ***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True

    def install(self) -> None:
        """Filter the judge's logger and every handler of the root logger (idempotent)."""
        for target in [log, *logging.getLogger().handlers]:
            if self not in target.filters:
                target.addFilter(self)


REDACT = Redactor()
log.addFilter(REDACT)


def parse_score(reply: str) -> int | float | None:
    """The rating in a judge reply: ``[[x]]``, else ``[x]`` (int or float, as FastChat's literal_eval reads it);
    None when there is none or it is outside 1..10."""
    m = _SCORE.search(reply) or _SCORE_BACKUP.search(reply)
    if not m:
        return None
    text = m.group(1)
    value: int | float = float(text) if "." in text else int(text)
    return value if 1 <= value <= 10 else None


def read_api_key(env_name: str, environ: Mapping[str, str]) -> str:
    """The API key from ``environ[env_name]``; the error names the variable, never a value."""
    if not env_name:
        raise ConfigError("judge: api_key_env (the NAME of the environment variable holding the key) is not set")
    key = environ.get(env_name, "")
    if not key.strip():
        raise ConfigError(f"judge: environment variable {env_name} is unset or empty; export the judge API key there")
    REDACT.add(key.strip())
    return key.strip()


class Backend(Protocol):
    name: str

    def complete(self, *, system: str, user: str, match: "Match") -> str:
        """The judge's reply text for one prompt."""


class OpenAIChatBackend:
    """Minimal client for ``POST {base_url}/chat/completions`` with retries and exponential backoff.

    Retries on HTTP 5xx, 429, timeouts and connection errors; any other HTTP error raises :class:`JudgeError`
    at once, with the start of the endpoint's error body. Every message, reply and log line passes through
    :data:`REDACT`, with which the key is registered.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url:
            raise ConfigError("judge: base_url is not set")
        if not model:
            raise ConfigError("judge: model is not set")
        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._key = api_key
        REDACT.add(api_key)
        self.max_tokens, self.temperature, self.timeout_s = max_tokens, temperature, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self._sleep = sleep

    def __repr__(self) -> str:  # never show the key
        return REDACT(f"OpenAIChatBackend(model={self.name!r}, url={self.url!r})")

    def redact(self, text: str) -> str:
        return REDACT(text)

    def _post(self, body: bytes) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def complete(self, *, system: str, user: str, match: "Match | None" = None) -> str:
        body = json.dumps({
            "model": self.name,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
        }).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                data = self._post(body)
                content = data["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError(f"message content is {type(content).__name__}")
                return self.redact(content)
            except urllib.error.HTTPError as exc:
                detail = _error_body(exc)
                if exc.code != 429 and exc.code < 500:
                    raise JudgeError(REDACT(f"judge endpoint {self.url}: HTTP {exc.code} {exc.reason} "
                                            f"(model {self.name!r}){detail}; not retrying")) from None
                last = f"HTTP {exc.code} {exc.reason}{detail}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                last = f"malformed response ({type(exc).__name__}: {exc})"
            last = self.redact(last)
            if attempt < self.max_retries:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (1 + 0.1 * random.random())
                log.warning("judge call failed (%s); retry %d/%d in %.1f s", last, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise TimeoutError(REDACT(f"judge endpoint {self.url}: no answer after {self.max_retries + 1} tries ({last})"))


def _error_body(exc: urllib.error.HTTPError, limit: int = 300) -> str:
    """The start of an HTTP error's body (what the endpoint says went wrong), on one line; redacted by the
    caller's message."""
    try:
        body = exc.read(limit + 1).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a body we cannot read adds nothing
        return ""
    finally:
        exc.close()
    body = " ".join(body.split())
    return f": {body[:limit]}{'...' if len(body) > limit else ''}" if body else ""


class ToyBackend:
    """The toy world's rubric judge behind the judge interface: its integer score comes back as a reply text
    with ``[[x]]``, parsed like any judge reply."""

    def __init__(self, *, rubric: str, name: str = "toy-judge") -> None:
        from kept.world.judge import ToyJudge

        if not Path(rubric).is_file():
            raise KeptError(f"{rubric}: missing toy judge rubric")
        self.name = name
        self._judge = ToyJudge(rubric)

    def complete(self, *, system: str, user: str, match: "Match") -> str:
        score = self._judge.score(int(match.question["question_id"]), match.turn, match.answer_turns[match.turn - 1])
        return f"Rubric score for turn {match.turn}. Rating: [[{int(score)}]]"

    def redact(self, text: str) -> str:
        return text


@dataclass
class Match:
    """One judge call: a question, the model's answers, the turn judged and its prompt."""

    question: dict[str, Any]
    answer_turns: list[str]
    turn: int  # 1 or 2
    prompt_name: str
    reference: list[str] | None


def build_matches(
    questions: list[dict[str, Any]], answers: dict[Any, list[str]], refs: dict[Any, list[str]], *, where: str
) -> list[Match]:
    """Every (question, turn) to judge, with its FastChat prompt name. Checks answers and references first,
    so a missing one fails before any judge call."""
    matches = []
    for q in questions:
        qid = q["question_id"]
        if qid not in answers:
            raise KeptError(f"{where}: no answer to question {qid!r}")
        turns = answers[qid]
        ref_based = q["category"] in NEED_REF_CATEGORIES
        ref = refs.get(qid) if ref_based else None
        n = len(q["turns"])
        if len(turns) < n:
            raise KeptError(f"{where}: question {qid!r} has {n} turns but the answer has {len(turns)}")
        if ref_based and (ref is None or len(ref) < n):
            raise KeptError(f"question {qid!r} ({q['category']}): no reference answer for all {n} turns")
        for turn in range(1, min(n, 2) + 1):
            name = ("single-math-v1" if ref_based else "single-v1") + ("-multi-turn" if turn == 2 else "")
            matches.append(Match(question=q, answer_turns=turns, turn=turn, prompt_name=name, reference=ref))
    return matches


def format_prompt(match: Match, prompt: dict[str, Any]) -> str:
    """The judge's user prompt, filled as FastChat's ``run_judge_single`` fills it."""
    q, a = match.question["turns"], match.answer_turns
    kwargs: dict[str, str] = {}
    if match.reference is not None:
        kwargs["ref_answer_1"] = match.reference[0]
        if match.turn == 2:
            kwargs["ref_answer_2"] = match.reference[1]
    try:
        if match.turn == 2:
            return prompt["prompt_template"].format(
                question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **kwargs)
        return prompt["prompt_template"].format(question=q[0], answer=a[0], **kwargs)
    except (KeyError, IndexError) as exc:
        raise KeptError(f"judge prompt {match.prompt_name!r}: cannot fill template ({exc})") from exc


def judge_one(backend: Any, match: Match, prompt: dict[str, Any], model_id: str) -> dict[str, Any]:
    """One FastChat judgment record. Transient endpoint failures become a failed record (score -1)."""
    user = format_prompt(match, prompt)
    record: dict[str, Any] = {
        "question_id": match.question["question_id"],
        "model": model_id,
        "judge": [backend.name, match.prompt_name],
        "user_prompt": backend.redact(user),
        "turn": match.turn,
    }
    try:
        reply = backend.complete(system=prompt["system_prompt"], user=user, match=match)
    except JudgeError:
        raise
    except (TimeoutError, OSError) as exc:
        record.update(judgment="$ERROR$", score=-1, error=backend.redact(str(exc)), tstamp=time.time())
        return record
    score = parse_score(reply)
    record.update(judgment=backend.redact(reply), score=score if score is not None else -1, tstamp=time.time())
    if score is None:
        record["error"] = "no [[rating]] score between 1 and 10 in the judge reply"
    return record


@dataclass
class JudgeConfig:
    """Judge one model's MT-Bench answer file."""

    answers: str  # FastChat answer file (model_answer/{model_id}.jsonl)
    questions: str  # FastChat question.jsonl
    output: str  # judgments, FastChat single-grading format
    prompts: str | None = None  # FastChat judge_prompts.jsonl (required by API judges)
    reference_answers: str | None = None  # FastChat reference_answer/{model}.jsonl (else question "reference")
    parallel: int = 4  # concurrent judge calls
    question_limit: int | None = None


def judge_answers(cfg: JudgeConfig, backend: Any) -> list[dict[str, Any]]:
    """Judge every answer of ``cfg.answers`` with ``backend`` and write the judgment file atomically. Any error
    leaves as a :class:`~kept.errors.KeptError` whose text went through :data:`REDACT`."""
    REDACT.install()
    try:
        return _judge_answers(cfg, backend)
    except KeptError as exc:
        raise type(exc)(REDACT(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any text an exception carries may hold what the endpoint echoed
        raise JudgeError(REDACT(f"judge: {type(exc).__name__}: {exc}")) from None


def _judge_answers(cfg: JudgeConfig, backend: Any) -> list[dict[str, Any]]:
    from kept.eval.common import read_jsonl
    from kept.eval.mtbench_data import load_questions
    from kept.jsonl import write_jsonl

    questions = load_questions(cfg.questions, limit=cfg.question_limit)
    rows = read_jsonl(cfg.answers, what="MT-Bench answers")
    model_ids = {r.get("model_id") for r in rows}
    if len(model_ids) != 1 or None in model_ids:
        raise KeptError(f"{cfg.answers}: expected answers of exactly one model_id, found {sorted(map(str, model_ids))}")
    model_id = model_ids.pop()
    answers = {}
    for i, r in enumerate(rows, start=1):
        try:
            answers[r["question_id"]] = list(r["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError) as exc:
            raise KeptError(f"{cfg.answers}:{i}: not a FastChat answer record ({exc})") from exc
    prompts = load_prompts(cfg.prompts)
    refs = load_references(cfg.reference_answers, questions)
    matches = build_matches(questions, answers, refs, where=cfg.answers)
    log.info("judging %d turns of %s with %s", len(matches), model_id, backend.name)
    bar = Progress(len(matches), desc=f"mtbench judge {model_id}", unit="judgment")

    def one(match: Match) -> dict[str, Any]:
        record = judge_one(backend, match, prompts[match.prompt_name], model_id)
        bar.update()
        return record

    with ThreadPoolExecutor(max_workers=max(1, cfg.parallel)) as pool:
        records = list(pool.map(one, matches))
    failed = sum(r["score"] == -1 for r in records)
    log.info("%d judgments, %d failed", len(records), failed)
    write_jsonl(cfg.output, records)
    return records


def make_backend(settings: Mapping[str, Any], *, api_key: str | None = None) -> Any:
    """A judge backend from its settings: ``{"backend": "toy", "rubric": ...}`` or ``{"backend": "openai",
    "model", "base_url", ...}`` (``api_key`` passed separately, read by the caller)."""
    kind = settings.get("backend")
    if kind == "toy":
        return ToyBackend(rubric=settings["rubric"], name=settings.get("model") or "toy-judge")
    if kind == "openai":
        if api_key is None:
            raise ConfigError("judge: the openai backend needs an API key")
        return OpenAIChatBackend(
            model=settings.get("model") or "", base_url=settings.get("base_url") or "", api_key=api_key,
            max_tokens=int(settings.get("max_tokens", 2048)), timeout_s=float(settings.get("timeout_s", 120)),
            max_retries=int(settings.get("max_retries", 6)), backoff_s=float(settings.get("backoff_s", 2.0)),
        )
    raise ConfigError(f"judge: unknown backend {kind!r}; expected 'openai' or 'toy'")


def run_judge_job(cfg: JudgeConfig, *, settings: Mapping[str, Any], environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Judge ``cfg.answers`` with the judge described by ``settings`` (config eval.mtbench.judge). For an
    API judge the key comes from ``environ[settings["api_key_env"]]``; only the variable's name is ever
    configured, logged or recorded."""
    if not settings or not settings.get("backend"):
        raise ConfigError("eval.mtbench.judge is not configured: set a judge (backend toy or openai); "
                          "MT-Bench scores are never made up")
    key = None
    if settings["backend"] == "openai":
        key = read_api_key(settings.get("api_key_env") or "", environ)
        if cfg.prompts is None:
            raise ConfigError("judge: an API judge needs FastChat's judge_prompts.jsonl (eval.mtbench.data)")
    backend = make_backend(settings, api_key=key)
    return judge_answers(cfg, backend)
