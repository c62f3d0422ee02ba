"""The proxy middleware that makes every error answer JSON, driven as the proxy drives it (ASGI)."""

import asyncio
import json

from dmf_ray.pipelines.serve.errors import JsonErrors, proxy_middlewares


def run(app) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(JsonErrors(app)({"type": "http", "method": "POST", "path": "/v1/embed"}, receive, send))
    return sent


def body_of(sent: list[dict]) -> tuple[int, dict, dict]:
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(body)


def test_plain_text_error_becomes_json_detail():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 408,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"31")]})
        await send({"type": "http.response.body", "body": b"Request abc timed out after 1s."})

    status, headers, body = body_of(run(app))
    assert status == 408 and headers[b"content-type"] == b"application/json"
    assert body == {"detail": "Request abc timed out after 1s."}
    assert int(headers[b"content-length"]) == len(json.dumps(body))


def test_no_answer_at_all_becomes_a_json_500():
    async def died(scope, receive, send):  # the proxy when the Ingress replica died under the request
        return None

    async def raised(scope, receive, send):
        raise RuntimeError("replica gone")

    for app in (died, raised):
        status, _, body = body_of(run(app))
        assert status == 500 and "failed inside the service" in body["detail"]


def test_json_and_successful_answers_pass_untouched():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 422, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"detail": "x"}'})

    sent = run(app)
    assert sent[1]["body"] == b'{"detail": "x"}' and len(sent) == 2
    assert proxy_middlewares()[0].cls is JsonErrors
