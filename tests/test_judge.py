"""The vlm_judge reward: parsing, presets, a real OpenAI-style HTTP server, a tiny local VLM."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from visalign.models.tiny_vlm import CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from visalign.renderers.base import RenderResult
from visalign.rewards import RenderService, Sample
from visalign.rewards.judge import (
    CallableJudgeBackend,
    JudgeRequest,
    OpenAIJudgeBackend,
    TransformersJudgeBackend,
    VlmJudgeReward,
    chartmimic_preset,
    first_json_object,
    get_preset,
    parse_score,
    pointwise_preset,
    strip_reasoning,
    visual_erm_preset,
)

SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"


def erm_expected(severities: list[float]) -> float:
    """The Visual-ERM formula, written out independently of the module."""
    total = sum(min(3.0, max(1.0, float(s))) for s in severities)
    return 1.0 + min(1.0, max(0.0, 1.0 - total / 50.0))


def picture(width: int, height: int, colour: str = "red") -> Image.Image:
    """A white image with a coloured block: not one flat colour, and identifiable by its size."""
    img = Image.new("RGB", (width, height), "white")
    img.paste(Image.new("RGB", (width // 2, height // 2), colour), (1, 1))
    return img


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


class TestStripReasoning:
    def test_think_blocks_removed(self) -> None:
        assert strip_reasoning("<think>a {x}</think>answer") == "answer"
        # the answer follows the last closing tag (the rule of rewards.reasoning.strip_think)
        assert strip_reasoning("<THINK>one</THINK> A <think>two\nlines</think> B") == "B"
        assert strip_reasoning("<think>Score: 2/10 then </think> no, Score: 3/10</think>Score: 9/10") == "Score: 9/10"

    def test_unclosed_leading_block(self) -> None:
        # the chat template opened <think> in the prompt: only the closing tag is generated
        assert strip_reasoning('I compare the bars...\n</think>\n{"errors": []}') == '{"errors": []}'
        # a block opened and never closed (truncated answer): nothing after it is an answer
        assert strip_reasoning("<think>still reasoning Score: 3/10") == ""
        assert strip_reasoning("Score: 9/10 <think>second thoughts") == "Score: 9/10"

    def test_fences(self) -> None:
        assert strip_reasoning('```json\n{"errors": []}\n```') == '{"errors": []}'
        assert strip_reasoning('Here:\n```\n{"a": 1}\n```\nDone') == 'Here:\n\n{"a": 1}\n\nDone'
        assert strip_reasoning('```json{"a": 1}```') == '{"a": 1}'

    def test_plain_text_unchanged(self) -> None:
        assert strip_reasoning("  Score: 87/100 ") == "Score: 87/100"


class TestFirstJsonObject:
    def test_nested(self) -> None:
        text = 'x {"errors": [{"a": {"b": [1, {"c": 2}]}}]} y'
        assert first_json_object(text) == {"errors": [{"a": {"b": [1, {"c": 2}]}}]}

    def test_braces_and_quotes_in_strings(self) -> None:
        text = r'{"d": "a } and { and \" and \\", "e": "]"} trailing }'
        assert first_json_object(text) == {"d": 'a } and { and " and \\', "e": "]"}

    def test_first_of_several(self) -> None:
        assert first_json_object('{"a": 1} {"b": 2}') == {"a": 1}

    def test_invalid_candidates_skipped(self) -> None:
        assert first_json_object("{a: 1} {'b': 2} {\"c\": 3}") == {"c": 3}
        # an unbalanced outer object: the first balanced valid one inside it is found
        assert first_json_object('{"errors": [{"severity": 2}') == {"severity": 2}
        # a mismatched closer makes its enclosing candidates invalid, not the later ones
        assert first_json_object('{"a": [1}, {"b": 1}') == {"b": 1}

    def test_arrays(self) -> None:
        assert first_json_object("[1, 2] {}") == {}
        assert first_json_object("[1, 2] {}", arrays=True) == [1, 2]
        assert first_json_object("[not json] [3]", arrays=True) == [3]

    def test_garbage(self) -> None:
        for text in ["", "no json here", "{{{{", "}}}}{", "{" * 5000, '{"a": NaN}', '{"a": 1,}', "\x00{\x01}"]:
            assert first_json_object(text) is None, text

    def test_never_evaluates(self) -> None:
        assert first_json_object("{__import__('os').system('true')}") is None

    def test_deep_nesting_is_not_a_crash(self) -> None:
        deep = '{"a": ' + "[" * 20_000 + "]" * 20_000 + "}"
        t0 = time.process_time()  # CPU time: what a quadratic scan would spend, whatever else runs
        assert first_json_object(deep) is None  # too deep for the decoder: skipped, no RecursionError
        assert first_json_object(deep + ' {"b": 1}', arrays=True) == {"b": 1}
        assert time.process_time() - t0 < 5
        shallow = first_json_object('{"x": ' + "[" * 50 + "]" * 50 + "}")
        assert shallow is not None and list(shallow) == ["x"]


class TestParseScore:
    @pytest.mark.parametrize("text, expected", [
        ("Score: 87/100", 0.87),
        ("score:87/100", 0.87),
        ("**Score: 87/100**", 0.87),
        ("**Score:** 87 / 100", 0.87),
        ("Final Score: 87.5/100", 0.875),
        ("Score: 0/100", 0.0),
        ("Score: 100/100", 1.0),
        ("Type 20/20, layout 10/10.\nScore: 40/100\nOn reflection:\nScore: 55/100", 0.55),
        ("<think>Score: 10/100</think>Score: 90/100", 0.9),
        ("Score：66/100", 0.66),
    ])
    def test_chartmimic_variants(self, text: str, expected: float) -> None:
        j = parse_score(text, "chartmimic")
        assert not j.parse_failed
        assert j.score == pytest.approx(expected)

    @pytest.mark.parametrize("text", ["Score: 101/100", "Score: -3/100", "Score: 87", "Score: 8/10",
                                      "87/100", "", "<think>Score: 90/100", "Score: abc/100"])
    def test_chartmimic_failures(self, text: str) -> None:
        j = parse_score(text, "chartmimic")
        assert j.parse_failed and j.score == 0.0 and j.error

    def test_pointwise_scale(self) -> None:
        assert parse_score("Fine. Score: 7", "pointwise").score == pytest.approx(0.7)
        assert parse_score("Score: 7/10", "pointwise").score == pytest.approx(0.7)
        five = pointwise_preset(scale=5)
        assert parse_score("Score: 4/5", five).score == pytest.approx(0.8)
        assert parse_score("Score: 5", five).score == 1.0
        for bad in ["Score: 0", "Score: 6", "Score: 4/10", "four"]:
            j = parse_score(bad, five)
            assert j.parse_failed and j.score == 0.0, bad

    def test_visual_erm(self) -> None:
        ok = parse_score('```json\n{"errors": [{"category": "data", "severity": 2, "location": "x", '
                         '"description": "y"}, {"category": "text", "severity": 3}]}\n```', "visual_erm")
        assert not ok.parse_failed
        assert ok.score == pytest.approx(erm_expected([2, 3]))
        assert ok.parsed["severity_sum"] == 5.0 and len(ok.parsed["errors"]) == 2
        assert parse_score('{"errors": []}', "visual_erm").score == 2.0

    def test_visual_erm_clipping(self) -> None:
        j = parse_score('{"errors": [{"severity": 0}, {"severity": 9}, {"severity": "2"}, {"severity": 2.5}]}',
                        "visual_erm")
        assert not j.parse_failed
        assert j.score == pytest.approx(erm_expected([1, 3, 2, 2.5]))
        many = json.dumps({"errors": [{"severity": 3}] * 40})
        assert parse_score(many, "visual_erm").score == 1.0  # clip(1 - 120/50, 0, 1) = 0

    @pytest.mark.parametrize("text", [
        "the images match",
        '{"errors": [{"severity": "high"}]}',
        '{"errors": [{"severity": true}]}',
        '{"errors": [{"category": "data"}]}',
        '{"errors": ["bar 2 wrong"]}',
        '{"errors": "none"}',
        '{"mistakes": []}',
        '<think>{"errors": []}</think>',
    ])
    def test_visual_erm_failures(self, text: str) -> None:
        j = parse_score(text, "visual_erm")
        assert j.parse_failed and j.error
        assert j.score == 1.0 + min(1.0, max(0.0, 1.0 - 25 / 50)) == 1.5  # counted as severity 25

    def test_visual_erm_bare_list(self) -> None:
        assert parse_score('[{"severity": 1}]', "visual_erm").score == pytest.approx(erm_expected([1]))
        # a list mentioned before the object does not hide it
        j = parse_score('Categories ["data", "text"]: {"errors": [{"severity": 3}]}', "visual_erm")
        assert not j.parse_failed and j.score == pytest.approx(erm_expected([3]))

    def test_unknown_preset(self) -> None:
        with pytest.raises(ValueError, match="unknown judge preset"):
            get_preset("nope")


class TestPresets:
    def test_image_order_and_prompt(self) -> None:
        ref, gen = picture(48, 36), picture(40, 30, "blue")
        for preset in (visual_erm_preset(), chartmimic_preset()):
            request = preset.prepare(Sample(image=gen, reference_image=ref))
            assert [p.size for p in request.images] == [(48, 36), (40, 30)]
            assert request.parts[0] == "Reference image:"
        assert "Score: N/100" in chartmimic_preset().instruction
        for part in ("type", "layout", "text", "data", "style", "clarity"):
            assert part in chartmimic_preset().instruction.lower()
        request = pointwise_preset(scale=5).prepare(Sample(prompt="a {red} cat", image=gen))
        assert [p.size for p in request.images] == [(40, 30)]
        assert '"a {red} cat"' in request.text and "from 1 to 5" in request.text

    def test_skips(self) -> None:
        ref = picture(8, 8)
        erm = visual_erm_preset()
        cases = {
            "no code": Sample(reference_image=ref),
            "empty code": Sample(code="  ", reference_image=ref),
            "failed": Sample(code="x", kind="svg", reference_image=ref,
                             rendered=RenderResult.failure("syntax", "bad")),
            "blank": Sample(image=Image.new("RGB", (8, 8), "white"), reference_image=ref),
        }
        for name, sample in cases.items():
            skip = erm.prepare(sample)
            assert skip.score == 0.0 and "not judged" in skip.reason, name
        assert erm.prepare(Sample(image=ref)).score is None  # no reference: not applicable
        assert pointwise_preset().prepare(Sample(image=ref)).score is None  # no prompt
        # pointwise judges a flat image
        assert pointwise_preset().prepare(Sample(prompt="snow", image=Image.new("RGB", (8, 8), "white"))).images


# ---------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server
# ---------------------------------------------------------------------------------------------------


@dataclass
class Action:
    """What the test server does with one request."""

    answer: str | None = "Score: 5/10"
    status: int = 200
    delay: float = 0.0
    close: bool = False
    trickle: float = 0.0  # seconds between body bytes
    truncate: bool = False  # announce more bytes than are sent, then hang up
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # the body as is


@dataclass
class Seen:
    """One request as the server saw it."""

    n: int
    at: float
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def images(self) -> list[Image.Image]:
        out = []
        for part in self.body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:image/png;base64,")
                out.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        return out

    @property
    def text(self) -> str:
        return "\n".join(p["text"] for p in self.body["messages"][-1]["content"] if p["type"] == "text")


class JudgeServer:
    """An OpenAI chat-completions server on 127.0.0.1 whose answers a test scripts with ``behave``."""

    def __init__(self) -> None:
        self.behave: Callable[[Seen], Action] = lambda seen: Action()
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Condition()  # notified when a request is read
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                with outer.lock:
                    seen = Seen(len(outer.seen), time.monotonic(), dict(self.headers.items()), body)
                    outer.seen.append(seen)
                    outer.lock.notify_all()
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self.respond(outer.behave(seen))
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def respond(self, action: Action) -> None:
                if action.delay:
                    outer.stop.wait(action.delay)
                if action.close:
                    self.close_connection = True
                    return
                if action.raw is not None:
                    payload = action.raw
                elif action.status == 200:
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "model": "judge",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": action.answer}}],
                    }).encode()
                else:
                    payload = json.dumps({"error": {"message": action.answer}}).encode()
                self.send_response(action.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) + (50 if action.truncate else 0)))
                self.send_header("Connection", "close")
                for k, v in action.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if action.trickle:
                    for b in payload:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                        if outer.stop.wait(action.trickle):
                            return
                else:
                    self.wfile.write(payload)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client hung up on a slow answer: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_seen(self, n: int, limit: float = 60.0) -> int:
        """How many requests the server has read, once it has read ``n`` (or ``limit`` s passed: a failure)."""
        with self.lock:
            self.lock.wait_for(lambda: len(self.seen) >= n, timeout=limit)
            return len(self.seen)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    s = JudgeServer()
    yield s
    s.close()


def backend_for(server: JudgeServer, **kw: Any) -> OpenAIJudgeBackend:
    opts: dict[str, Any] = {"model": "judge-model", "timeout": 5.0, "backoff": 0.01, "api_key_env": "VISALIGN_TEST_KEY"}
    opts.update(kw)
    return OpenAIJudgeBackend(server.url, **opts)


def marker(seen: Seen) -> str:
    """The MARK:... word a test put in a request's text."""
    m = re.search(r"MARK:(\w+)", seen.text)
    return m.group(1) if m else ""


class TestOpenAIBackendRewards:
    def test_visual_erm_scores_and_request_shape(self, server: JudgeServer) -> None:
        severities = {0: [], 1: [1, 2], 2: [3, 3, 3], 3: [0, 7, "2"], 4: [3] * 20}
        ref = picture(48, 36, "green")

        def behave(seen: Seen) -> Action:
            k = seen.images[1].width - 20
            errors = [{"category": "data", "severity": s, "location": "here", "description": "d"}
                      for s in severities[k]]
            return Action(answer="<think>hmm</think>```json\n" + json.dumps({"errors": errors}) + "\n```")

        server.behave = behave
        samples = [Sample(image=picture(20 + k, 20), reference_image=ref) for k in severities]
        samples += [Sample(reference_image=ref),  # no code
                    Sample(image=Image.new("RGB", (30, 30), "white"), reference_image=ref),  # all white
                    Sample(code="<svg", kind="svg", reference_image=ref,
                           rendered=RenderResult.failure("syntax", "not xml")),
                    Sample(image=picture(20, 20))]  # no reference
        reward = VlmJudgeReward(backend_for(server), preset="visual_erm")
        out = reward(samples)
        assert out.scores[:5] == pytest.approx([erm_expected(severities[k]) for k in severities])
        assert out.scores[4] == 1.0
        assert out.scores[5:8] == [0.0, 0.0, 0.0] and out.scores[8] is None
        for d in out.details[5:]:
            assert d["judged"] is False and d["reason"]
        assert "no code" in out.details[5]["reason"] and "blank" in out.details[6]["reason"]
        assert "syntax" in out.details[7]["reason"]
        assert len(server.seen) == 5  # no judge call for the skipped samples
        assert out.metrics["judged"] == 5 and out.metrics["skipped"] == 4
        assert out.metrics["parse_failures"] == 0 and out.metrics["request_failures"] == 0
        assert out.metrics["mean_latency"] > 0
        d = out.details[1]
        assert d["attempts"] == 1 and d["parse_failed"] is False and d["severity_sum"] == 3.0
        assert d["errors"][0]["severity"] == 1.0 and d["answer"].startswith("<think>")
        assert d["finish_reason"] == "stop"

        body = server.seen[0].body
        assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
        assert [m["role"] for m in body["messages"]] == ["user"]
        kinds = [p["type"] for p in body["messages"][0]["content"]]
        assert kinds == ["text", "image_url", "text", "image_url", "text"]
        for seen in server.seen:  # the reference first, then the generated image
            assert seen.images[0].size == (48, 36)
            assert seen.images[1].getpixel((2, 2)) == (255, 0, 0)
        assert "strict JSON" in server.seen[0].text
        assert server.seen[0].headers["Content-Type"] == "application/json"

    def test_chartmimic_with_garbage(self, server: JudgeServer) -> None:
        answers = {20: "Types match.\nScore: 87/100", 21: "I cannot tell.", 22: "Score: 120/100",
                   23: "**Score:** 40 / 100"}
        server.behave = lambda seen: Action(answer=answers[seen.images[1].width])
        ref = picture(30, 30)
        out = VlmJudgeReward(backend_for(server), preset="chartmimic")(
            [Sample(image=picture(w, 20), reference_image=ref) for w in answers])
        assert out.scores == pytest.approx([0.87, 0.0, 0.0, 0.40])
        assert out.metrics["parse_failures"] == 2
        assert [d["parse_failed"] for d in out.details] == [False, True, True, False]
        assert out.details[1]["parse_error"] and out.details[0]["raw_score"] == 87
        assert "Score: N/100" in server.seen[0].text

    def test_visual_erm_garbage_is_severity_25(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="The second chart looks {roughly} right.")
        ref = picture(30, 30)
        out = VlmJudgeReward(backend_for(server))([Sample(image=picture(20, 20), reference_image=ref)] * 2)
        assert out.scores == [1.5, 1.5] and out.metrics["parse_failures"] == 2

    def test_pointwise_scale_5(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer={"cat": "Score: 4", "dog": "Score: 2/5", "owl": "nope"}[
            next(w for w in ("cat", "dog", "owl") if w in seen.text)])
        samples = [Sample(prompt=f"a photo of a {w}", image=picture(24, 24)) for w in ("cat", "dog", "owl")]
        samples.append(Sample(image=picture(24, 24)))  # no prompt: not applicable
        out = VlmJudgeReward(backend_for(server), preset=get_preset("pointwise", scale=5))(samples)
        assert out.scores == pytest.approx([0.8, 0.4, 0.0, None])
        assert out.metrics["parse_failures"] == 1 and len(server.seen) == 3
        assert [p["type"] for p in server.seen[0].body["messages"][0]["content"]] == ["text", "image_url", "text"]

    def test_rendered_code_through_the_shared_service(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer='{"errors": [{"severity": 2}]}')
        svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
               '<rect width="32" height="32" fill="white"/><rect width="10" height="20" fill="blue"/></svg>')
        ref_svg = svg.replace("blue", "green")
        samples = [Sample(code=svg, kind="svg", reference_image=picture(32, 32)),
                   Sample(code="<svg broken", kind="svg", reference_image=picture(32, 32)),
                   # code extracted from the completion, reference rendered from its program
                   Sample(completion=f"Here it is:\n```svg\n{svg}\n```", kind="svg", reference_code=ref_svg),
                   Sample(completion="I cannot draw that.", kind="svg", reference_code=ref_svg)]
        with RenderService(timeout=20, workers=1) as service:
            reward = VlmJudgeReward(backend_for(server))
            assert reward.bind(service) is reward and reward.service is service  # as a composite does
            out = reward(samples)
        assert samples[0].rendered is not None and samples[0].rendered.ok
        assert samples[2].code == svg and samples[2].reference_rendered.ok
        assert out.scores == pytest.approx([erm_expected([2]), 0.0, erm_expected([2]), 0.0])
        assert out.details[1]["judged"] is False and "syntax" in out.details[1]["reason"]
        assert "no code" in out.details[3]["reason"] and len(server.seen) == 2
        # the two requests run concurrently, in either order: each sends the generated render second,
        # and sample 2's request sends its rendered reference (green) first
        pixels = [[img.getpixel((2, 2))[:3] for img in seen.images] for seen in server.seen]
        assert all(p[1] == (0, 0, 255) for p in pixels)
        assert sum(p[0] == (0, 128, 0) for p in pixels) == 1


def direct(server: JudgeServer, marks: list[str], **kw: Any) -> list[Any]:
    backend = backend_for(server, **kw)
    return backend.generate([JudgeRequest(parts=[f"MARK:{m}", picture(16, 16)]) for m in marks])


class TestRetries:
    def test_slow_answers_time_out_and_fail(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="Score: 9/10", delay=30)
        t0 = time.monotonic()
        out = VlmJudgeReward(backend_for(server, timeout=0.3, max_retries=1), preset="pointwise")(
            [Sample(prompt="p", image=picture(8, 8))])
        assert time.monotonic() - t0 < 15  # two 0.3 s attempts, far below the server's 30 s delay
        assert out.scores == [0.0]  # failure_score = the preset's parse-failure score
        d = out.details[0]
        assert d["request_failed"] and "timeout" in d["error"] and d["attempts"] == 2
        assert out.metrics["request_failures"] == 1 and out.metrics["parse_failures"] == 0
        # the client gave up on each attempt after 0.3 s, maybe before the server's thread read the request
        # (a loaded machine): both were sent, so both are recorded once the server gets to them
        assert server.wait_seen(2) == 2

    def test_request_failure_score_default_and_override(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(status=400, answer="bad request")
        s = [Sample(image=picture(20, 20), reference_image=picture(30, 30))]
        assert VlmJudgeReward(backend_for(server))(s).scores == [1.5]
        assert VlmJudgeReward(backend_for(server), failure_score=0.0)(s).scores == [0.0]

    def test_total_deadline_on_a_trickling_answer(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="Score: 9/10", trickle=0.2)
        t0 = time.monotonic()
        [r] = direct(server, ["trickle"], timeout=0.5, max_retries=0)
        assert not r.ok and "timeout" in r.error and r.attempts == 1
        # the ~170-byte answer at 0.2 s a byte takes ~34 s: the 0.5 s total deadline cut it well before (the
        # bound is half of the answer's time, so that a loaded machine's slow start cannot reach it)
        assert time.monotonic() - t0 < 17

    def test_500_then_success_with_exponential_backoff(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(status=500, answer="boom") if seen.n < 3 else Action(answer="ok")
        [r] = direct(server, ["x"], backoff=0.05, jitter=False, max_retries=3)
        assert r.ok and r.text == "ok" and r.attempts == 4
        gaps = [b.at - a.at for a, b in zip(server.seen, server.seen[1:], strict=False)]
        for gap, wait in zip(gaps, [0.05, 0.1, 0.2], strict=True):
            assert gap >= wait * 0.95
        assert r.elapsed >= 0.33

    def test_500_exhausts_retries(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(status=503, answer="overloaded")
        [r] = direct(server, ["x"], max_retries=2)
        assert not r.ok and r.attempts == 3 and r.error.startswith("HTTP 503") and "overloaded" in r.error

    def test_429_honours_retry_after(self, server: JudgeServer) -> None:
        server.behave = lambda seen: (Action(status=429, answer="slow down", headers={"Retry-After": "0.4"})
                                      if seen.n == 0 else Action(answer="ok"))
        [r] = direct(server, ["x"], backoff=0.01)
        assert r.ok and r.attempts == 2
        assert server.seen[1].at - server.seen[0].at >= 0.38

    def test_400_is_not_retried(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(status=400, answer="image too large")
        [r] = direct(server, ["x"], max_retries=3)
        assert not r.ok and r.attempts == 1 and len(server.seen) == 1
        assert r.error.startswith("HTTP 400") and "image too large" in r.error

    def test_closed_connection_is_retried(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(close=True) if seen.n == 0 else Action(answer="Score: 3/10")
        [r] = direct(server, ["x"])
        assert r.ok and r.attempts == 2
        server.seen.clear()
        server.behave = lambda seen: Action(close=True)
        [r] = direct(server, ["x"], max_retries=2)
        assert not r.ok and r.attempts == 3 and "connection error" in r.error and len(server.seen) == 3

    def test_truncated_body_is_retried(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="cut", truncate=seen.n == 0)
        [r] = direct(server, ["x"])
        assert r.ok and r.text == "cut" and r.attempts == 2

    def test_connection_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        backend = OpenAIJudgeBackend(f"http://127.0.0.1:{port}", model="m", backoff=0.01, max_retries=2)
        [r] = backend.generate([JudgeRequest(parts=["hi"])])
        assert not r.ok and r.attempts == 3 and "connection error" in r.error

    def test_malformed_200_is_not_retried(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(raw=b"<html>proxy page</html>")
        [r] = direct(server, ["x"])
        assert not r.ok and r.attempts == 1 and "malformed response" in r.error

    def test_batch_goes_on_past_failures(self, server: JudgeServer) -> None:
        server.behave = lambda seen: {"bad": Action(status=400, answer="no"), "ok": Action(answer="fine")}[marker(seen)]
        out = direct(server, ["ok", "bad", "ok"])
        assert [r.ok for r in out] == [True, False, True] and out[0].text == "fine"


class TestConcurrencyAndLoops:
    def test_concurrency_limit(self, server: JudgeServer) -> None:
        # the first three requests are held until all three are in the server at once (a barrier, not a delay
        # that a loaded machine can outlast before the third one arrives); then each answer takes 0.3 s, time
        # for a request over the limit to arrive and be counted
        barrier = threading.Barrier(3)

        def behave(seen: Seen) -> Action:
            if seen.n < 3:
                barrier.wait(timeout=60)
            return Action(answer="fine", delay=0.3)

        server.behave = behave
        out = direct(server, [str(i) for i in range(9)], max_concurrency=3)
        assert all(r.ok for r in out) and [r.attempts for r in out] == [1] * 9
        assert server.max_in_flight == 3

    def test_order_kept_under_concurrency(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer=marker(seen), delay=0.02 * (5 - int(marker(seen))))
        out = direct(server, [str(i) for i in range(6)], max_concurrency=6)
        assert [r.text for r in out] == [str(i) for i in range(6)]

    def test_called_from_a_running_loop(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="Score: 8/10")
        reward = VlmJudgeReward(backend_for(server), preset="pointwise")

        async def inside() -> list[float | None]:
            return reward([Sample(prompt="p", image=picture(8, 8))]).scores

        assert asyncio.run(inside()) == [pytest.approx(0.8)]

    def test_agenerate(self, server: JudgeServer) -> None:
        server.behave = lambda seen: Action(answer="yes")
        out = asyncio.run(backend_for(server).agenerate([JudgeRequest(parts=["a"]), JudgeRequest(parts=["b"])]))
        assert [r.text for r in out] == ["yes", "yes"]
        assert backend_for(server).generate([]) == []


class TestApiKey:
    def test_key_sent_never_leaked(self, server: JudgeServer, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        backend = backend_for(server, max_retries=1)
        monkeypatch.setenv("VISALIGN_TEST_KEY", SECRET)  # read at call time, after construction

        def behave(seen: Seen) -> Action:
            auth = seen.headers.get("Authorization", "")
            if marker(seen) == "echo":  # a server that echoes the credentials in its error
                return Action(status=401, answer=f"invalid key {auth}")
            if marker(seen) == "echo5":
                return Action(status=500, answer=f"upstream rejected {auth}")
            return Action(answer=f"Score: 6/10 {auth}" if marker(seen) == "leaky" else "Score: 6/10")

        server.behave = behave
        out = backend.generate([JudgeRequest(parts=[f"MARK:{m}"]) for m in ("ok", "echo", "echo5", "leaky")])
        assert out[0].ok and not out[1].ok and not out[2].ok and out[3].text == "Score: 6/10 Bearer ***"
        assert {s.headers["Authorization"] for s in server.seen} == {f"Bearer {SECRET}"}
        assert "***" in out[1].error and "***" in out[2].error

        reward = VlmJudgeReward(backend, preset="pointwise")
        samples = [Sample(prompt="MARK:echo", image=picture(8, 8)), Sample(prompt="MARK:ok", image=picture(8, 8))]
        result = reward(samples)
        assert result.details[0]["request_failed"] and result.scores[1] == pytest.approx(0.6)

        texts = [caplog.text, json.dumps(result.details), repr(out), repr(backend), repr(vars(backend)),
                 *(r.error or "" for r in out)]
        assert all(SECRET not in t for t in texts)
        assert "401" in caplog.text and "503" not in caplog.text

    def test_key_with_control_characters(self, server: JudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("VISALIGN_TEST_KEY", SECRET + "\r\nX-Evil: 1")
        with pytest.raises(ValueError) as info:
            direct(server, ["x"])
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)
        assert not server.seen

    def test_no_key_no_header(self, server: JudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("VISALIGN_TEST_KEY", raising=False)
        server.behave = lambda seen: Action(answer="ok")
        [r] = direct(server, ["x"])
        assert r.ok and "Authorization" not in server.seen[0].headers

    def test_url_forms(self) -> None:
        def url(base: str) -> str:
            return OpenAIJudgeBackend(base, model="m").url

        assert url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
        assert url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
        assert url("http://h:8000") == "http://h:8000/v1/chat/completions"
        assert url("https://api.example.com/v1/chat/completions") == "https://api.example.com/v1/chat/completions"
        with pytest.raises(ValueError):
            OpenAIJudgeBackend("ftp://h/v1", model="m")
        with pytest.raises(ValueError, match="environment variable"):
            OpenAIJudgeBackend(f"http://user:{SECRET}@h/v1", model="m")


class TestCallableBackend:
    def test_exception_fails_one_request(self) -> None:
        def answer(request: JudgeRequest) -> str:
            if "boom" in request.text:
                raise RuntimeError("judge crashed")
            return '{"errors": []}'

        ref = picture(10, 10)
        out = VlmJudgeReward(CallableJudgeBackend(answer))(
            [Sample(image=picture(12, 12), reference_image=ref, prompt="x"),
             Sample(image=picture(12, 12), reference_image=ref)])
        assert out.scores == [2.0, 2.0]  # the prompt is not used by visual_erm
        bad = VlmJudgeReward(CallableJudgeBackend(lambda r: (_ for _ in ()).throw(RuntimeError("boom"))))
        out = bad([Sample(image=picture(12, 12), reference_image=ref)])
        assert out.scores == [1.5] and out.metrics["request_failures"] == 1
        assert "RuntimeError" in out.details[0]["error"]

    def test_long_answers_truncated(self) -> None:
        out = VlmJudgeReward(CallableJudgeBackend(lambda r: "x" * 10_000), max_answer_chars=100)(
            [Sample(image=picture(12, 12), reference_image=picture(10, 10))])
        assert len(out.details[0]["answer"]) < 130 and "10000 chars" in out.details[0]["answer"]


# ---------------------------------------------------------------------------------------------------
# A tiny local VLM with random weights, built offline
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Qwen2-VL with random weights (2 layers, hidden 32, patch 8, merge 2) and a processor built
    offline (a BPE tokenizer trained here), saved where ``from_pretrained`` can load it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=QWEN_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Reference image: Generated image:", "List every visual difference of the image.",
                             "Rate how well the image matches the prompt.", "system user assistant"], trainer)
    tokenizer = transformers.Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    pixels = {"min_pixels": 16 * 16, "max_pixels": 48 * 48, "patch_size": 8, "merge_size": 2, "temporal_patch_size": 2}
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**pixels),
        video_processor=transformers.Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    config = transformers.Qwen2VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 1024, "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
                     # head_dim 16: M-RoPE sections (temporal, height, width) sum to head_dim / 2
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "patch_size": 8,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("tiny-qwen2-vl")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return {"path": path, "model": model, "processor": processor, "ids": ids}


class TestTransformersBackend:
    @pytest.mark.slow
    def test_loads_from_path_and_garbage_takes_the_parse_failure_path(self, tiny_vlm: Any) -> None:
        backend = TransformersJudgeBackend(str(tiny_vlm["path"]), device="cpu", max_new_tokens=12, batch_size=2)
        assert type(backend.model).__name__ == "Qwen2VLForConditionalGeneration"
        ids = tiny_vlm["ids"]
        assert backend.suppress_tokens == sorted(ids[t] for t in ("<|image_pad|>", "<|video_pad|>",
                                                                   "<|vision_start|>", "<|vision_end|>"))
        ref = picture(40, 30)
        # different image sizes → different prompt lengths → left padding inside a batch
        samples = [Sample(image=picture(16, 16), reference_image=ref),
                   Sample(image=picture(48, 32, "blue"), reference_image=ref),
                   Sample(reference_image=ref),  # no code: not judged
                   Sample(image=picture(24, 40), reference_image=ref)]
        out = VlmJudgeReward(backend, preset="visual_erm")(samples)
        assert all(isinstance(s, float) and math.isfinite(s) for s in out.scores)
        assert out.scores == [1.5, 1.5, 0.0, 1.5]
        assert out.metrics["parse_failures"] == 3 and out.metrics["request_failures"] == 0
        for d in (out.details[0], out.details[1], out.details[3]):
            assert d["parse_failed"] and isinstance(d["answer"], str) and d["attempts"] == 1
        assert out.details[2]["judged"] is False

    @pytest.mark.slow
    def test_loaded_model_pointwise_and_failing_generate(self, tiny_vlm: Any) -> None:
        backend = TransformersJudgeBackend(tiny_vlm["model"], processor=tiny_vlm["processor"], max_new_tokens=8)
        reward = VlmJudgeReward(backend, preset=pointwise_preset(scale=5))
        samples = [Sample(prompt="a red square", image=picture(32, 32)), Sample(prompt="snow", image=picture(16, 16))]
        out = reward(samples)
        assert out.scores == [0.0, 0.0] and out.metrics["parse_failures"] == 2
        # the same samples again: no state left over from the previous call (M-RoPE deltas)
        assert reward(samples).scores == [0.0, 0.0]

        def broken(**kwargs: Any) -> Any:
            raise RuntimeError("CUDA out of memory (simulated)")

        backend.model.generate = broken
        try:
            out = reward(samples)
        finally:
            del backend.model.generate
        assert out.scores == [0.0, 0.0] and out.metrics["request_failures"] == 2
        assert "out of memory" in out.details[0]["error"]

    @pytest.mark.slow
    def test_batched_answers_equal_one_by_one(self, tiny_vlm: Any) -> None:
        """Left padding and per-sample M-RoPE positions: a batch answers what each request alone does."""
        backend = TransformersJudgeBackend(tiny_vlm["model"], processor=tiny_vlm["processor"], max_new_tokens=10)
        requests = [JudgeRequest(parts=["Reference image:", picture(16, 16), "Rate it."]),
                    JudgeRequest(parts=[picture(48, 32, "blue"), picture(32, 16), "List every difference."],
                                 system="You are a judge."),
                    JudgeRequest(parts=["no image at all, only a much longer text prompt to pad"])]
        backend.batch_size = 3
        batched = [r.text for r in backend.generate(requests)]
        backend.batch_size = 1
        alone = [r.text for r in backend.generate(requests)]
        assert batched == alone and all(isinstance(t, str) for t in batched)
