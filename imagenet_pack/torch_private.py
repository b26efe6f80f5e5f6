"""The private torch functions this package calls, in one place. Each is looked up once, and where a torch
lacks it (renamed, removed) the caller takes a public path giving the same result, only slower: so an
upgrade of torch never breaks a user. ``tests/test_torch_private.py`` checks that the supported torch has
every one, so a rename is noticed, not silently paid for.
"""
from __future__ import annotations

from typing import Any

import torch

# an uninitialised shared-memory storage (``share_memory_()`` first fills private memory, then copies it)
NEW_SHARED: Any = getattr(torch.UntypedStorage, "_new_shared", None)
# how many tensors share a storage (to reuse a buffer no tensor holds any more)
STORAGE_USE_COUNT: Any = getattr(torch._C, "_storage_Use_Count", None)
# torch's uint8 antialiased bilinear resize with an ``out=`` argument (``F.interpolate`` copies once more)
UPSAMPLE_BILINEAR_AA: Any = getattr(getattr(torch._C, "_nn", None), "_upsample_bilinear2d_aa", None)

USED = {"torch.UntypedStorage._new_shared": NEW_SHARED, "torch._C._storage_Use_Count": STORAGE_USE_COUNT,
        "torch._C._nn._upsample_bilinear2d_aa": UPSAMPLE_BILINEAR_AA}
