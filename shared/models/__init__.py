"""Offline model preparation (nothing is downloaded from a model hub)."""
