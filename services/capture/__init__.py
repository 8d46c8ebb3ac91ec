"""capture: the loop's front door.

An HTTP API (and, behind a setting, an OpenAI-compatible proxy) that turns what a
chatbot answered into `ModelOutput` events on `rlhf.outputs`. It answers 202 only once
the broker has acknowledged the write, so a client can treat 202 as "stored".
"""
