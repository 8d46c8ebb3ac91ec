"""Embedded runtimes for the laptop, tests and CI: real parts started by the project."""
