"""Foundations every layer uses: config, run folders, atomic I/O, provenance, progress, process groups."""
