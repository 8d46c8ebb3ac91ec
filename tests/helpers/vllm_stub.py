"""TEST DOUBLE for vLLM, which cannot run on these machines: only its two dynamic-LoRA
endpoints, with vLLM's answers for a repeated load or an unknown unload (HTTP 400)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def create_vllm_stub() -> FastAPI:
    app = FastAPI()
    app.state.loaded = {}
    app.state.calls = []

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict[str, str]) -> PlainTextResponse:
        app.state.calls.append(("load", body["lora_name"]))
        if body["lora_name"] in app.state.loaded:
            return PlainTextResponse(f"The lora adapter '{body['lora_name']}' has already been loaded.", 400)
        app.state.loaded[body["lora_name"]] = body["lora_path"]
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict[str, str]) -> PlainTextResponse:
        app.state.calls.append(("unload", body["lora_name"]))
        if app.state.loaded.pop(body["lora_name"], None) is None:
            return PlainTextResponse(f"The lora adapter '{body['lora_name']}' cannot be found.", 400)
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    return app
