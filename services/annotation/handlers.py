"""The annotation service's handler: a ranking task in, nothing out (the record goes to
Argilla; rankings and preferences come later from the collector). See `pusher.py`."""

from .pusher import Pusher

__all__ = ["Pusher"]
