"""Measuring, in one place: the CLI's ``bench`` and ``demo``, the ``benchmarks/`` scripts and the GPU check
all time things with this. Its modules are mapped in docs/DESIGN.md."""
