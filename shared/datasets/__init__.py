"""Data shipped with the project (so nothing is downloaded at run time)."""
