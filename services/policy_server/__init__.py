"""policy-server: serves the current policy OpenAI-compatibly and closes the loop.

Base model plus the promoted LoRA adapter from the registry; new versions are loaded
beside the old one on model-update events and take traffic by canary; every
completion it serves is captured to rlhf.outputs, so the loop runs without an
external chatbot.
"""
