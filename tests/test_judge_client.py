"""The MT-Bench judge client against a local OpenAI-compatible HTTP server started on loopback: retries on
server errors and timeouts, [[x]] parsing, replies without a score, fatal client errors, and the API key never
appearing in logs or outputs."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval_tiny import MT_QUESTIONS, write_prompts, write_questions
from kept.errors import ConfigError
from kept.eval.judge import (
    JudgeConfig,
    JudgeError,
    Match,
    OpenAIChatBackend,
    judge_answers,
    judge_one,
    parse_score,
    run_judge_job,
)
from kept.eval.mtbench_data import load_prompts


class FakeOpenAI:
    """A chat-completions endpoint on 127.0.0.1. ``script`` is a list of actions consumed one per request
    (then ``default``): ("ok", text), ("status", code), ("sleep", seconds, text), ("garbage",), ("echo_auth",),
    ("echo_status", code): the Authorization header echoed in the status line, a response header and the body,
    ("echo_stall", seconds): a 200 whose body starts with the Authorization header and then stalls."""

    def __init__(self, script=None, default=("ok", "Good. Rating: [[8]]")):
        self.script, self.default, self.requests = list(script or []), default, []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = outer.script.pop(0) if outer.script else outer.default
                if action[0] == "status":
                    self.send_response(action[1])
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "nope"}}')
                    return
                auth = self.headers.get("Authorization", "")
                if action[0] == "echo_status":
                    body = json.dumps({"error": {"message": f"bad credentials: {auth}", "key": auth}}).encode()
                    self.send_response(action[1], f"Denied for {auth}")
                    self.send_header("WWW-Authenticate", auth)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if action[0] == "echo_stall":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(f'{{"echo": "{auth}", '.encode())
                    self.wfile.flush()
                    time.sleep(action[1])
                    return
                if action[0] == "sleep":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                if action[0] == "garbage":
                    payload = b"not json"
                else:
                    text = self.headers["Authorization"] if action[0] == "echo_auth" else action[1]
                    payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                          "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


KEY = "sk-test-" + secrets.token_hex(16)


def _backend(url, **kw):
    sleeps = []
    b = OpenAIChatBackend(model="judge-model", base_url=url, api_key=KEY, sleep=sleeps.append, **kw)
    return b, sleeps


def test_parse_score():
    assert parse_score("The answer is fine. Rating: [[7]]") == 7.0
    assert parse_score("Rating: [[8.5]] and later [[3]]") == 8.5  # first [[x]], as FastChat
    assert parse_score("Rating: [6]") == 6.0  # FastChat's backup pattern
    assert parse_score("No rating here.") is None
    assert parse_score("Rating: [[11]]") is None and parse_score("Rating: [[0]]") is None


def test_request_and_retry_on_server_errors():
    with FakeOpenAI(script=[("status", 500), ("status", 503), ("garbage",)]) as srv:
        b, sleeps = _backend(srv.url, max_retries=4, backoff_s=0.5)
        reply = b.complete(system="sys", user="usr")
    assert reply == "Good. Rating: [[8]]"
    assert len(srv.requests) == 4 and len(sleeps) == 3
    assert sleeps[0] < sleeps[1] < sleeps[2]  # exponential backoff
    req = srv.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    assert req["body"]["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "usr"}]
    assert KEY not in json.dumps(req["body"])


def test_retry_on_timeout_and_429():
    with FakeOpenAI(script=[("sleep", 1.5, "late [[2]]"), ("status", 429)]) as srv:
        b, sleeps = _backend(srv.url, max_retries=3, timeout_s=0.3)
        assert b.complete(system="s", user="u") == "Good. Rating: [[8]]"
    assert len(sleeps) == 2


def test_client_error_is_fatal_and_names_no_key():
    with FakeOpenAI(script=[("status", 401)]) as srv:
        b, sleeps = _backend(srv.url, max_retries=5)
        with pytest.raises(JudgeError, match="HTTP 401") as err:
            b.complete(system="s", user="u")
    assert len(srv.requests) == 1 and sleeps == [] and KEY not in str(err.value)


def _match(turn=1):
    q = MT_QUESTIONS[0]
    return Match(question=q, answer_turns=["a1", "a2"], turn=turn,
                 prompt_name="single-v1" if turn == 1 else "single-v1-multi-turn", reference=None)


def test_reply_without_score_and_exhausted_retries_are_failed_not_scored(tmp_path):
    prompts = load_prompts(write_prompts(tmp_path / "p.jsonl"))
    with FakeOpenAI(script=[("ok", "I will not give a number.")], default=("status", 502)) as srv:
        b, _ = _backend(srv.url, max_retries=2)
        no_score = judge_one(b, _match(), prompts["single-v1"], "m")
        down = judge_one(b, _match(2), prompts["single-v1-multi-turn"], "m")
    assert no_score["score"] == -1 and "no [[rating]]" in no_score["error"]
    assert no_score["judgment"] == "I will not give a number."
    assert down["score"] == -1 and down["judgment"] == "$ERROR$" and "502" in down["error"]
    assert down["judge"] == ["judge-model", "single-v1-multi-turn"] and down["turn"] == 2


def _answer_file(path: Path, model_id="m-llama3") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for q in MT_QUESTIONS:
            fh.write(json.dumps({"question_id": q["question_id"], "answer_id": "a", "model_id": model_id,
                                 "choices": [{"index": 0, "turns": [f"answer one {q['question_id']}",
                                                                    "answer two"]}], "tstamp": 0.0}) + "\n")
    return path


def test_full_job_key_from_env_never_in_logs_or_outputs(tmp_path, caplog, capsys):
    questions = write_questions(tmp_path / "question.jsonl")
    prompts = write_prompts(tmp_path / "judge_prompts.jsonl")
    answers = _answer_file(tmp_path / "model_answer" / "m-llama3.jsonl")
    out = tmp_path / "judgments.jsonl"
    # a server error, a scoreless reply, and a reply that echoes the Authorization header back
    script = [("status", 500), ("ok", "no score"), ("echo_auth",)]
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(script=script) as srv:
        settings = {"backend": "openai", "model": "judge-model", "base_url": srv.url, "api_key_env": "KEPT_TEST_JUDGE_KEY",
                    "max_retries": 3, "backoff_s": 0.01, "parallel": 1}
        records = run_judge_job(JudgeConfig(answers=str(answers), questions=str(questions), output=str(out),
                                            prompts=str(prompts), parallel=1),
                                settings=settings, environ={"KEPT_TEST_JUDGE_KEY": KEY})
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in srv.requests)  # the key was used
    assert len(records) == 16 and sum(r["score"] == -1 for r in records) == 2
    written = out.read_text()
    assert KEY not in written and "***" in written  # the echoed header is redacted
    logs = caplog.text + capsys.readouterr().err
    assert "retry" in logs and KEY not in logs


def test_missing_key_env_is_a_clear_error_and_writes_nothing(tmp_path):
    questions = write_questions(tmp_path / "question.jsonl")
    answers = _answer_file(tmp_path / "a" / "m.jsonl")
    cfg = JudgeConfig(answers=str(answers), questions=str(questions), output=str(tmp_path / "j.jsonl"),
                      prompts=str(write_prompts(tmp_path / "p.jsonl")))
    settings = {"backend": "openai", "model": "gpt-4", "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "KEPT_TEST_UNSET_KEY"}
    with pytest.raises(ConfigError, match="KEPT_TEST_UNSET_KEY"):
        run_judge_job(cfg, settings=settings, environ={})
    with pytest.raises(ConfigError, match="not configured"):
        run_judge_job(cfg, settings={}, environ={})
    assert not (tmp_path / "j.jsonl").exists()


def test_fatal_endpoint_error_leaves_no_judgment_file(tmp_path):
    questions = write_questions(tmp_path / "question.jsonl")
    answers = _answer_file(tmp_path / "a" / "m.jsonl")
    out = tmp_path / "j.jsonl"
    with FakeOpenAI(default=("status", 403)) as srv:
        b, _ = _backend(srv.url)
        with pytest.raises(JudgeError, match="403"):
            judge_answers(JudgeConfig(answers=str(answers), questions=str(questions), output=str(out),
                                      prompts=str(write_prompts(tmp_path / "p.jsonl")), parallel=2), b)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_missing_reference_answer_fails_before_any_call(tmp_path):
    qs = [dict(q) for q in MT_QUESTIONS]
    qs[2].pop("reference")  # a math question without a reference
    questions = write_questions(tmp_path / "question.jsonl", qs)
    answers = _answer_file(tmp_path / "a" / "m.jsonl")
    with FakeOpenAI() as srv:
        b, _ = _backend(srv.url)
        with pytest.raises(Exception, match="111.*reference"):
            judge_answers(JudgeConfig(answers=str(answers), questions=str(questions), output=str(tmp_path / "j"),
                                      prompts=str(write_prompts(tmp_path / "p.jsonl"))), b)
    assert srv.requests == []


def test_redactor_removes_the_key_in_every_form_and_url_credentials():
    from kept.eval.judge import Redactor

    r = Redactor()
    key = "sk-a/b+c=d\"e"
    r.add(key)
    import urllib.parse

    text = (f"raw {key} | url {urllib.parse.quote(key, safe='')} | form {urllib.parse.quote_plus(key)} | "
            f"json {json.dumps(key)} | https://user:hunter2@judge.example/v1?api-key=zzz123&model=m | "
            "Authorization: Bearer unregistered-token-0123456789")
    out = r(text)
    for leaked in (key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key), json.dumps(key)[1:-1],
                   "hunter2", "zzz123", "unregistered-token-0123456789"):
        assert leaked not in out, (leaked, out)
    assert "model=m" in out and "judge.example" in out  # only the secrets go
    record = logging.LogRecord("kept.eval.judge", logging.WARNING, __file__, 1, "call failed (%s)", (key,), None)
    assert r.filter(record) and key not in record.getMessage()
