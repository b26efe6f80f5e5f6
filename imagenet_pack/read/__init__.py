"""Reading: a converted database as a PyTorch dataset, decoded with OpenCV into tensors.

Read in this order: ``reader`` (opening shards per process, the split's metadata), ``dataset``
(:class:`LmdbImageNet`), ``pixels`` (torch-free JPEG decoding, nvImageCodec region decode), ``crops`` (the
crop-box law shared by the CPU and GPU decoders), ``decoders`` (PIL, tensor and fused decode+crop decoders),
``staged`` (records and plans staged for a decoder elsewhere: the device's rows of a hybrid batch).

Nothing is imported here (``staged`` and ``pixels`` are torch-free, and importing one module of the wing
should not import them all); import from the package root (``from imagenet_pack import LmdbImageNet``) or
from the modules.
"""
