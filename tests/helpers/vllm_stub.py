"""TEST DOUBLE for vLLM, which cannot run on these machines: its two dynamic-LoRA
endpoints and /v1/models, with vLLM's answers for a repeated load (400) and for
unloading an adapter it does not have (404, vLLM >= 0.8)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def create_vllm_stub(loaded: dict[str, str] | None = None, unknown_unload_text: str | None = None) -> FastAPI:
    app = FastAPI()
    app.state.loaded = dict(loaded or {})
    app.state.calls = []

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        base = {"id": "smollm2", "object": "model", "root": "/models/smollm2", "parent": None}
        adapters = [{"id": name, "object": "model", "root": path, "parent": "smollm2"}
                    for name, path in app.state.loaded.items()]
        return {"object": "list", "data": [base, *adapters]}

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
            text = unknown_unload_text or f"The lora adapter '{body['lora_name']}' cannot be found."
            return PlainTextResponse(text, 404)
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    return app
