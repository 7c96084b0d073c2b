"""StreamAssembler and parse_completion: every byte boundary, every line ending, three API shapes.

The chat results are checked against the official openai SDK's own stream accumulator
(`ChatCompletionStreamState`) fed from the SDK's own SSE decoding of the same bytes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from proxy.answer import AssembledOutput, parse_completion
from proxy.streaming import StreamAssembler
from tests.proxy.fake_candidate import (
    ANSWER,
    ANSWER_PIECES,
    FakeCandidate,
    chat_body,
    chat_stream,
    response_body,
    responses_stream,
    sse,
    token_logprobs,
)


def assemble(pieces: list[bytes]) -> AssembledOutput:
    a = StreamAssembler()
    for p in pieces:
        a.feed(p)
    return a.result()


def splits(data: bytes, rng: random.Random, n: int) -> Iterator[list[bytes]]:
    """`data` cut at n random sets of boundaries (1 to 40 cuts each)."""
    for _ in range(n):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, min(40, len(data) - 1))))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_chat_stream_with_usage_and_logprobs() -> None:
    out = assemble(chat_stream(logprobs=True, usage=True))
    assert out.text == ANSWER
    assert out.finish_reason == "stop"
    assert (out.prompt_tokens, out.completion_tokens) == (12, 6)
    assert out.model == "cand-model" and out.complete
    assert out.logprobs is not None
    assert orjson.loads(out.logprobs) == token_logprobs(ANSWER_PIECES)


def test_every_single_byte_boundary_gives_the_same_result() -> None:
    data = b"".join(chat_stream(logprobs=True, usage=True))
    whole = assemble([data])
    for i in range(1, len(data)):
        assert assemble([data[:i], data[i:]]) == whole, i
    assert assemble([data[i : i + 1] for i in range(len(data))]) == whole


def multiline(events: list[bytes]) -> bytes:
    """The same events with each JSON payload spread over several `data:` lines."""
    out = []
    for e in events:
        payload = e[len(b"data: ") :].strip()
        if payload.startswith(b"{"):
            text = orjson.dumps(orjson.loads(payload), option=orjson.OPT_INDENT_2)
            out.append(b"".join(b"data: " + line + b"\n" for line in text.split(b"\n")) + b"\n")
        else:
            out.append(e)
    return b"".join(out)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends_at_random_boundaries(newline: bytes) -> None:
    events = chat_stream(logprobs=True, usage=True)
    expected = assemble(events)
    assert expected.text == ANSWER and expected.complete
    converted = multiline(events).replace(b"\n", newline)
    for pieces in splits(converted, random.Random(7), 300):
        assert assemble(pieces) == expected


def test_multiline_data_comments_and_other_fields() -> None:
    chunk = orjson.dumps(chat_body()["choices"][0]["message"])  # any JSON, split over lines
    obj = {"choices": [{"index": 0, "delta": {"content": "a\nb"}, "finish_reason": "stop"}]}
    text = orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()
    event = "".join(f"data:{line}\n" for line in text.split("\n")) + "\n"
    data = b": keep-alive\n\nid: 7\nretry: 100\n" + event.encode() + b"data: [DONE]\n\n"
    out = assemble([data])
    assert chunk and out.text == "a\nb" and out.finish_reason == "stop" and out.complete


def test_cut_stream_is_incomplete_and_keeps_what_arrived() -> None:
    events = chat_stream(usage=True)
    data = b"".join(events[:4])
    a = StreamAssembler()
    a.feed(data + events[4][:25])  # half an event, then nothing
    out = a.result()
    assert not out.complete and out.finish_reason is None
    assert out.text == "".join(ANSWER_PIECES[:3])
    assert a.bad_events == 1


def test_done_without_finish_reason_is_complete_and_finish_without_done_too() -> None:
    chunk = chat_stream()[1]
    assert assemble([chunk, sse("[DONE]")]).complete
    assert assemble(chat_stream(done=False)).complete
    assert not assemble([chunk]).complete


def test_unterminated_last_event_still_counts() -> None:
    data = b"".join(chat_stream())[: -len(b"\n\n")]  # "data: [DONE]" without its blank line
    assert assemble([data]).complete
    assert assemble([data.replace(b"\n", b"\r\n") + b"\r"]).complete


@pytest.mark.parametrize("newline", [b"\n", b"\r"])
def test_an_oversized_line_is_dropped_not_held(newline: bytes) -> None:
    a = StreamAssembler()
    a.feed(b"data: {" + b"x" * 1024)
    for _ in range(9 * 1024):  # 9 MiB without a line end
        a.feed(b"y" * 1024)
    a.feed(b"z" + newline + newline)
    for e in chat_stream():
        a.feed(e.replace(b"\n", newline))
    out = a.result()
    assert out.text == ANSWER and out.complete and a.bad_events == 1
    assert len(a._buf) < 1024


def test_other_choices_and_non_json_events_are_ignored() -> None:
    other = {"choices": [{"index": 1, "delta": {"content": "NO"}, "finish_reason": None}]}
    events = [sse(other), b"data: not json\n\n", sse([1, 2]), *chat_stream()]
    a = StreamAssembler()
    for e in events:
        a.feed(e)
    out = a.result()
    assert out.text == ANSWER and a.bad_events == 1


def test_tool_call_stream_becomes_json_text() -> None:
    def call(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        )

    fn = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "route", "arguments": ""},
    }
    out = assemble(
        [
            call({"role": "assistant", "content": None, "tool_calls": [fn]}),
            call({"tool_calls": [{"index": 0, "function": {"arguments": '{"queue": '}}]}),
            call({"tool_calls": [{"index": 0, "function": {"arguments": '"billing"}'}}]}),
            call({}, "tool_calls"),
        ]
    )
    assert out.finish_reason == "tool_calls"
    assert orjson.loads(out.text or "") == [{"name": "route", "arguments": '{"queue": "billing"}'}]


def test_legacy_completions_stream_with_logprobs() -> None:
    def chunk(text: str, lp: float, finish: str | None = None) -> bytes:
        logprobs = {
            "tokens": [text],
            "token_logprobs": [lp],
            "top_logprobs": [{text: lp, "x": -5.0}],
            "text_offset": [0],
        }
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({"object": "text_completion", "model": "inst", "choices": [choice]})

    out = assemble([chunk(" hello", -0.5), chunk(" world", -0.25, "length"), sse("[DONE]")])
    assert out.text == " hello world" and out.finish_reason == "length" and out.model == "inst"
    assert orjson.loads(out.logprobs or "") == [
        {
            "token": " hello",
            "logprob": -0.5,
            "top_logprobs": [{"token": " hello", "logprob": -0.5}, {"token": "x", "logprob": -5.0}],
        },
        {
            "token": " world",
            "logprob": -0.25,
            "top_logprobs": [
                {"token": " world", "logprob": -0.25},
                {"token": "x", "logprob": -5.0},
            ],
        },
    ]


@pytest.mark.parametrize(("status", "finish"), [("completed", "stop"), ("incomplete", "length")])
def test_responses_api_stream(status: str, finish: str) -> None:
    data = b"".join(responses_stream(status=status))
    for pieces in splits(data, random.Random(3), 50):
        out = assemble(pieces)
        assert out.text == ANSWER and out.finish_reason == finish and out.complete
        assert (out.prompt_tokens, out.completion_tokens) == (12, 6)
        assert out.model == "cand-model"


def test_responses_stream_cut_before_completed_is_incomplete() -> None:
    out = assemble(responses_stream()[:-1])
    assert out.text == ANSWER and not out.complete and out.prompt_tokens is None


def test_parse_completion_chat_legacy_responses_embeddings() -> None:
    chat = parse_completion(orjson.dumps(chat_body(logprobs=True)))
    assert chat.text == ANSWER and chat.finish_reason == "stop" and chat.complete
    assert (chat.prompt_tokens, chat.completion_tokens, chat.model) == (12, 6, "cand-model")
    assert orjson.loads(chat.logprobs or "") == token_logprobs(ANSWER_PIECES)
    assert parse_completion(chat_body()) == parse_completion(orjson.dumps(chat_body()))
    assert parse_completion(chat_body()).logprobs is None

    legacy = parse_completion(
        {"model": "i", "choices": [{"index": 0, "text": " hi", "finish_reason": "length"}]}
    )
    assert (legacy.text, legacy.finish_reason, legacy.complete) == (" hi", "length", True)

    resp = parse_completion(response_body(status="incomplete"))
    assert (resp.text, resp.finish_reason, resp.prompt_tokens) == (ANSWER, "length", 12)

    emb = parse_completion({"object": "list", "data": [], "usage": {"prompt_tokens": 3}})
    assert (emb.text, emb.prompt_tokens, emb.complete) == (None, 3, True)


def test_parse_completion_tool_calls_and_content_parts() -> None:
    body = chat_body()
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert orjson.loads(parse_completion(body).text or "") == [{"name": "f", "arguments": "{}"}]
    body["choices"][0]["message"] = {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}
    assert parse_completion(body).text == "ab"


@pytest.mark.parametrize("raw", [b"", b"<html>", b"[1]", b'{"id": "x"}', b'{"choices": []}'])
def test_parse_completion_never_raises_on_garbage(raw: bytes) -> None:
    out = parse_completion(raw)
    assert not out.complete and out.text is None


async def test_matches_the_openai_sdk_accumulator() -> None:
    """The SDK decodes the same stream from a real server; both must agree on the answer."""
    fake = await FakeCandidate().start()
    try:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        state = ChatCompletionStreamState()
        stream = await client.chat.completions.create(
            model="cand-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            logprobs=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            state.handle_chunk(chunk)
        final = state.get_final_completion()
        await client.close()
    finally:
        await fake.close()
    raw = chat_stream(logprobs=True, usage=True)
    for chunk_bytes in raw[:-1]:  # the same chunks, validated by the SDK's own types
        ChatCompletionChunk.model_validate_json(chunk_bytes[len(b"data: ") :].strip())
    ours = assemble(raw)
    choice = final.choices[0]
    assert ours.text == choice.message.content
    assert ours.finish_reason == choice.finish_reason
    assert final.usage is not None
    assert (ours.prompt_tokens, ours.completion_tokens) == (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
    )
    assert choice.logprobs is not None and choice.logprobs.content is not None
    sdk_lps = [t.model_dump(exclude_none=False) for t in choice.logprobs.content]
    assert orjson.loads(ours.logprobs or "") == sdk_lps
