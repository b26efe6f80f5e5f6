"""Every private torch function the package calls exists on the torch it supports (each has a public fallback,
so a torch without one still works, only slower: this test says when that happens)."""
from __future__ import annotations

import torch

from imagenet_pack import torch_private


def test_every_private_torch_function_used_exists_on_this_torch():
    missing = [name for name, found in torch_private.USED.items() if found is None]
    assert not missing, f"torch {torch.__version__} lacks {missing}: the public fallbacks run (slower)"
    assert all(callable(found) for found in torch_private.USED.values())
