"""vllm-deployer: for production users who serve with vLLM.

Reacts to model-update events by calling vLLM's dynamic LoRA endpoints
(`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`; vLLM must run with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Routing between versions then happens by the
`model` name clients ask for (the adapter is registered under its version).
"""
