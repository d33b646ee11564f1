"""Drives the hub with the official OpenAI Python SDK, unchanged, and prints what
the SDK parsed as JSON for the Rust test (tests/api/openai_sdk.rs) to check."""

import json
import os

import openai
from openai import OpenAI

base_url = os.environ["HUB_BASE_URL"]
client = OpenAI(base_url=base_url, api_key=os.environ["HUB_KEY"], max_retries=0, timeout=30)
out = {"sdk_version": openai.__version__}

raw = client.chat.completions.with_raw_response.create(
    model="mock/gpt-mock", messages=[{"role": "user", "content": "Say hello"}], max_tokens=50
)
chat = raw.parse()
out["chat"] = {
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
    "request_id": raw.headers.get("x-request-id"),
}

text, usage = "", None
for chunk in client.chat.completions.create(
    model="mock/gpt-mock",
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
out["stream"] = {"text": text, "usage": usage}

tools = client.chat.completions.create(
    model="mock/conf-tools",
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
)
call = tools.choices[0].message.tool_calls[0]
out["tools"] = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}

embeddings = client.embeddings.create(model="mock/text-embedding-3-small", input=["a", "b"])
out["embeddings"] = {"count": len(embeddings.data), "dimensions": len(embeddings.data[0].embedding), "prompt_tokens": embeddings.usage.prompt_tokens}

images = client.images.generate(model="mock/gpt-image-1", prompt="a cat", n=2, response_format="b64_json")
out["images"] = {"count": len(images.data), "b64": images.data[0].b64_json}

models = client.models.list()
out["models"] = sorted(m.id for m in models.data)

try:
    OpenAI(base_url=base_url, api_key="aih_wrong", max_retries=0).chat.completions.create(
        model="mock/gpt-mock", messages=[{"role": "user", "content": "hi"}]
    )
    out["bad_key"] = "accepted"
except openai.AuthenticationError as e:
    out["bad_key"] = {"status": e.status_code, "code": e.code}

try:
    client.chat.completions.create(model="mock/nope", messages=[{"role": "user", "content": "hi"}])
    out["unknown_model"] = "accepted"
except openai.NotFoundError as e:
    out["unknown_model"] = {"status": e.status_code, "code": e.code}

print(json.dumps(out))
