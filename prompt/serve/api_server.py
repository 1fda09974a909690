"""FastChat's OpenAI-compatible API server, with the request checks PPD's workers need.

    python -m prompt.serve.api_server --host 127.0.0.1 --port 8000 --controller-address http://127.0.0.1:21001

It is `fastchat.serve.openai_api_server` (same flags, same routes) with these changes:
- streaming works with pydantic 2 (FastChat 0.2.36 calls pydantic 1's `json(ensure_ascii=...)`);
- errors carry their own HTTP status (400 bad parameter, 404 unknown model, 429 overloaded...) instead of
  400 for all;
- chat messages must be a non-empty list of system/user/assistant text messages;
- sampling options the worker cannot honour (top_p < 1 or top_k >= 1 when sampling, penalties, logprobs)
  are refused before a stream starts, not silently ignored;
- a prompt plus max_tokens beyond the model's context is refused instead of silently shortened;
- a streamed request the worker refuses at once (overloaded, bad parameter) gets that error as its HTTP
  response rather than inside a 200 stream.
"""
from __future__ import annotations

import json

from prompt.errors import PPDError
from prompt.serve.params import check_messages, check_sampling

PARAM_OUT_OF_RANGE, INVALID_MODEL, CONTEXT_OVERFLOW = 40302, 40301, 40303


def patch(server) -> None:
    """Install the checks into FastChat's `openai_api_server` module (its routes call these by name)."""
    from fastapi.responses import JSONResponse, StreamingResponse
    from fastchat.protocol.openai_api_protocol import ErrorResponse

    original_check_requests = server.check_requests

    def create_error_response(code: int, message: str) -> JSONResponse:
        # FastChat's codes start with an HTTP status; its 403xx are bad parameters (400) or an unknown model (404)
        status = {400: 400, 401: 401, 403: 400, 429: 429, 500: 500}.get(code // 100, 400)
        if code == INVALID_MODEL:
            status = 404
        return JSONResponse(ErrorResponse(message=message, code=code).model_dump(), status_code=status)

    def check_requests(request):
        error = original_check_requests(request)
        if error is not None:
            return error
        try:
            if hasattr(request, "messages"):
                check_messages(request.messages)
            elif isinstance(request.prompt, str) and not request.prompt:
                raise PPDError("the prompt is empty")
            check_sampling(request.temperature, request.top_p, request.top_k, request.presence_penalty,
                           request.frequency_penalty, getattr(request, "logprobs", None),
                           getattr(request, "best_of", None), getattr(request, "use_beam_search", None))
        except PPDError as exc:
            return create_error_response(PARAM_OUT_OF_RANGE, str(exc))
        return None

    async def check_length(request, prompt, max_tokens, worker_addr):
        context_len = await server.fetch_remote(worker_addr + "/model_details", {"model": request.model},
                                                "context_length")
        token_num = await server.fetch_remote(worker_addr + "/count_token", {"model": request.model, "prompt": prompt},
                                              "count")
        length = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else context_len - token_num
        if token_num + max(length, 1) > context_len:
            return None, create_error_response(
                CONTEXT_OVERFLOW, f"This model's maximum context length is {context_len} tokens; the prompt has "
                f"{token_num} tokens and max_tokens asks for {length} more.")
        return length, None

    class CheckedStreamingResponse(StreamingResponse):
        """Reads the stream up to the worker's first answer: an error there becomes the HTTP response."""

        async def __call__(self, scope, receive, send):
            iterator = self.body_iterator
            head = []
            async for chunk in iterator:
                head.append(chunk)
                error = _stream_error(chunk)
                if error is not None:
                    await create_error_response(*error)(scope, receive, send)
                    await _close(iterator)
                    return
                if len(head) >= 2 or '"role"' not in chunk:  # past the role-only first chunk of a chat stream
                    break

            async def replay():
                for chunk in head:
                    yield chunk
                async for chunk in iterator:
                    yield chunk

            self.body_iterator = replay()
            await super().__call__(scope, receive, send)

    for cls in (server.ChatCompletionStreamResponse, server.CompletionStreamResponse):
        cls.json = _json  # FastChat 0.2.36 calls pydantic 1's json(ensure_ascii=...), which pydantic 2 refuses
    server.create_error_response = create_error_response
    server.check_requests = check_requests
    server.check_length = check_length
    server.StreamingResponse = CheckedStreamingResponse


def _json(self, exclude_unset=False, exclude_none=False, **_):
    return self.model_dump_json(exclude_unset=exclude_unset, exclude_none=exclude_none)


def _stream_error(chunk):
    """(code, message) when an SSE chunk is FastChat's in-stream error, else None."""
    text = chunk.decode() if isinstance(chunk, bytes) else chunk
    if not text.startswith("data: {"):
        return None
    try:
        data = json.loads(text[len("data: "):])
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("error_code"):
        return int(data["error_code"]), str(data.get("text", ""))
    return None


async def _close(iterator):
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def main():
    import uvicorn
    from fastchat.serve import openai_api_server as server

    patch(server)
    args = server.create_openai_api_server()
    uvicorn.run(server.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
