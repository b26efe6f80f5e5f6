"""Measuring, in one place: the CLI's ``bench`` and ``demo``, the ``benchmarks/`` scripts and the GPU check
all time things with this.

Read in this order: ``options`` (what a run measures), ``timing`` (how a loader is timed: interleaved rounds,
warm-up untimed, medians),
``loaders`` (``imagenet-pack bench``: ImageFolder baselines against every read path), ``feed`` (training a
model from each feed against the compute bound; the GPU decode micro-benchmark), ``accuracy`` (a pretrained
model through every read path), ``report`` (the table, the chart, the JSON).
"""
