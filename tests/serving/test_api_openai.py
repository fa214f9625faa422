"""The OpenAI-compatible completions API (serving/openai_api.py), driven by the official
`openai` client against the shared Serve instance on 127.0.0.1: models, completions (greedy
equal to /v1/generate, sampled with n and top_p), streaming chunks with usage, stop sequences,
API keys, and the fields it refuses by name."""

from __future__ import annotations

import openai
import pytest

from .common import GUARD_KEY, _post

PROMPT = "once upon a time"


def _client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_models_and_completions_as_the_openai_client_sees_them(served):
    client = _client(served["url"])
    (card,) = client.models.list().data
    assert card.id == "tiny-gpt" and card.object == "model" and card.created > 1_700_000_000

    greedy = _post(served, "/v1/generate", {"inputs": [PROMPT], "max_new_tokens": 8}).json()
    greedy = greedy["predictions"][0]
    out = client.completions.create(model="tiny-gpt", prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.model == "tiny-gpt" and len(out.choices) == 1
    (choice,) = out.choices
    assert choice.text == greedy["text"] and choice.index == 0
    assert choice.finish_reason == ("length" if greedy["finish_reason"] == "length" else "stop")
    assert out.usage.completion_tokens == greedy["tokens"] > 0
    assert out.usage.prompt_tokens == greedy["prompt_tokens"] > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens

    # two prompts x n=3, sampled: choices i*n+j, every prompt counted once in usage
    many = client.completions.create(
        model="tiny-gpt@v0001",
        prompt=[PROMPT, "the"],
        n=3,
        max_tokens=5,
        temperature=0.9,
        top_p=0.9,
    )
    assert [c.index for c in many.choices] == list(range(6))
    both = _post(served, "/v1/generate", {"inputs": [PROMPT, "the"], "max_new_tokens": 1})
    assert many.usage.prompt_tokens == sum(p["prompt_tokens"] for p in both.json()["predictions"])
    assert 0 < many.usage.completion_tokens <= 6 * 5
    assert len({c.text for c in many.choices[:3]}) > 1  # one prompt's n choices: sampled

    text = greedy["text"]
    assert len(text) >= 6, greedy  # the tiny model writes something to cut
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(
        model="tiny-gpt", prompt=PROMPT, max_tokens=8, temperature=0, stop=stop
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streamed_completions_add_up_to_the_whole(served):
    client = _client(served["url"])
    whole = client.completions.create(model="tiny-gpt", prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(
        client.completions.create(
            model="tiny-gpt",
            prompt=PROMPT,
            max_tokens=10,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *deltas, last = chunks
    # two greedy choices of one prompt: the prompt counted once, the continuation twice
    assert last.choices == [] and last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == 2 * whole.usage.completion_tokens
    for i in (0, 1):
        mine = [c.choices[0] for c in deltas if c.choices[0].index == i]
        assert "".join(c.text for c in mine) == whole.choices[0].text
        assert [c.finish_reason for c in mine][-1] == whole.choices[0].finish_reason
        assert all(c.finish_reason is None for c in mine[:-1]) and len(mine) >= 3
    assert {c.id for c in chunks} == {chunks[0].id}


def test_wrong_models_keys_and_fields_are_refused_by_name(served, guarded):
    client = _client(served["url"])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    for kw, field in [
        ({"echo": True}, "echo"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 1}, "seed"),
        ({"prompt": [1, 2, 3]}, "token-id prompts"),
        ({"prompt": []}, "non-empty list"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"extra_body": {"mystery": 1}}, "mystery"),
    ]:
        args = {"model": "tiny-gpt", "prompt": PROMPT, **kw}
        with pytest.raises(openai.UnprocessableEntityError, match=field):
            client.completions.create(**args)
    # 413: more choices than the server takes in one request (max_inputs 16)
    with pytest.raises(openai.APIStatusError, match="at most 16") as e:
        client.completions.create(model="tiny-gpt", prompt=[PROMPT] * 6, n=3)
    assert e.value.status_code == 413

    # API keys as on every other route: the guarded app serves the same GPT behind them
    with pytest.raises(openai.AuthenticationError):
        _client(guarded["url"], key="wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(guarded["url"], key="wrong").completions.create(model="tiny-gpt", prompt="a")
    ok = _client(guarded["url"], key=GUARD_KEY).completions.create(
        model="tiny-gpt", prompt=PROMPT, max_tokens=3
    )
    assert len(ok.choices) == 1
