"""Drives the gateway's OpenAI-compatible API with the real `openai` Python SDK.

Run by tests/it/openai_api.rs with .deps/venv/bin/python:

    sdk.py <scenario> [args...]

with OPENAI_BASE_URL (http://127.0.0.1:<port>/v1) and OPENAI_API_KEY set. Each scenario
prints one JSON object on stdout (what the SDK returned, or which exception it raised) and
exits 0; the Rust test judges it. The SDK never retries here (max_retries=0), so a 429 or a
5xx is seen as such.
"""

import asyncio
import json
import sys

import openai
from pydantic import BaseModel


def client():
    return openai.OpenAI(max_retries=0, timeout=120)


def out(value):
    print(json.dumps(value))


def usage_of(u):
    if u is None:
        return None
    d = u.model_dump()
    return d


def error_of(e):
    return {
        "exception": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "body": getattr(e, "body", None),
        "retry_after": (
            e.response.headers.get("retry-after")
            if getattr(e, "response", None) is not None
            else None
        ),
    }


def chat(model, text):
    r = client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    out(
        {
            "object": r.object,
            "model": r.model,
            "content": r.choices[0].message.content,
            "finish_reason": r.choices[0].finish_reason,
            "usage": usage_of(r.usage),
        }
    )


def chat_history(model, session):
    """A conversation the caller keeps: system, an earlier exchange, a new question; sent
    as a sticky session when `session` is not '-'."""
    messages = [
        {"role": "system", "content": "OA-SYSTEM be brief"},
        {"role": "user", "content": "OA-HIST first question"},
        {"role": "assistant", "content": "OA-HIST first answer"},
        {"role": "user", "content": "OA-HIST second question"},
    ]
    extra = {} if session == "-" else {"user": session}
    r = client().chat.completions.create(model=model, messages=messages, **extra)
    out({"content": r.choices[0].message.content})


def chat_session(model, session, text):
    """One user message in the sticky session named by the X-Session-Id header."""
    r = client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Session-Id": session},
    )
    out({"content": r.choices[0].message.content})


def async_chat(model, text):
    async def run():
        c = openai.AsyncOpenAI(max_retries=0, timeout=120)
        r = await c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
        await c.close()
        return r

    r = asyncio.run(run())
    out({"content": r.choices[0].message.content, "usage": usage_of(r.usage)})


def stream(model, text):
    s = client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage, roles = [], None, None, []
    for chunk in s:
        if chunk.usage is not None:
            usage = usage_of(chunk.usage)
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                deltas.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    out({"deltas": deltas, "text": "".join(deltas), "finish_reason": finish, "usage": usage, "roles": roles})


def responses(model, first, second):
    c = client()
    r1 = c.responses.create(model=model, input=first)
    r2 = c.responses.create(model=model, input=second, previous_response_id=r1.id)
    out(
        {
            "first": {"id": r1.id, "text": r1.output_text, "usage": usage_of(r1.usage)},
            "second": {
                "id": r2.id,
                "text": r2.output_text,
                "previous": r2.previous_response_id,
            },
        }
    )


def responses_stream(model, text):
    events, text_out, completed = [], [], None
    with client().responses.stream(model=model, input=text) as s:
        for ev in s:
            events.append(ev.type)
            if ev.type == "response.output_text.delta":
                text_out.append(ev.delta)
        completed = s.get_final_response()
    out(
        {
            "events": events,
            "text": "".join(text_out),
            "final": completed.output_text,
            "usage": usage_of(completed.usage),
        }
    )


def previous_of_other(model, response_id):
    try:
        client().responses.create(model=model, input="x", previous_response_id=response_id)
        out({"exception": None})
    except openai.APIError as e:
        out(error_of(e))


class City(BaseModel):
    city: str
    population: int


def json_schema(model, text):
    try:
        r = client().chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": text}],
            response_format=City,
        )
        p = r.choices[0].message.parsed
        out({"parsed": p.model_dump() if p else None, "content": r.choices[0].message.content})
    except openai.APIError as e:
        out(error_of(e))


def expect_error(scenario, model=None, text=None):
    try:
        if scenario == "models":
            client().models.list()
        else:
            client().chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}]
            )
        out({"exception": None})
    except openai.APIError as e:
        out(error_of(e))


def models():
    c = client()
    listed = [m.id for m in c.models.list().data]
    one = c.models.retrieve(listed[-1])
    try:
        c.models.retrieve("no-such-model")
        missing = None
    except openai.NotFoundError as e:
        missing = e.body
    out({"models": listed, "retrieved": one.id, "owned_by": one.owned_by, "missing": missing})


def responses_unstored(model, text):
    """`store=False`: answered, but not resumable."""
    c = client()
    r = c.responses.create(model=model, input=text, store=False)
    try:
        c.responses.create(model=model, input="again", previous_response_id=r.id)
        again = None
    except openai.APIError as e:
        again = error_of(e)
    out({"text": r.output_text, "again": again})


def main():
    scenario, args = sys.argv[1], sys.argv[2:]
    if scenario == "chat":
        chat(*args)
    elif scenario == "chat_history":
        chat_history(*args)
    elif scenario == "chat_session":
        chat_session(*args)
    elif scenario == "async_chat":
        async_chat(*args)
    elif scenario == "stream":
        stream(*args)
    elif scenario == "responses":
        responses(*args)
    elif scenario == "responses_unstored":
        responses_unstored(*args)
    elif scenario == "responses_stream":
        responses_stream(*args)
    elif scenario == "previous_of_other":
        previous_of_other(*args)
    elif scenario == "json_schema":
        json_schema(*args)
    elif scenario == "models":
        models()
    elif scenario == "error":
        expect_error(args[0], *args[1:])
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
