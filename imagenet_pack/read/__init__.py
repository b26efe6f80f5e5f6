"""Reading: a converted database as a PyTorch dataset, decoded with OpenCV into tensors. Its modules are
mapped in docs/DESIGN.md.

Nothing is imported here (``staged`` and ``pixels`` are torch-free, and importing one module of the wing
should not import them all); import from the package root (``from imagenet_pack import LmdbImageNet``) or
from the modules.
"""
