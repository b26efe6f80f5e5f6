"""Shared fixtures: tiny ImageNet-shaped trees of real JPEG files, built fresh for each test session; and the
one rule for tests that need nvImageCodec (marked ``nvimgcodec``): skipped where it is not installed, failed
instead where IMAGENET_PACK_REQUIRE_NVIMGCODEC=1 (CI installs it, so there nothing may skip silently)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import opts, small_tree

from imagenet_pack import convert
from imagenet_pack.read.nvcodec import AVAILABLE as NVIMGCODEC_AVAILABLE


@pytest.fixture(scope="session")
def tree_session(tmp_path_factory) -> Path:
    return small_tree(tmp_path_factory.mktemp("tree") / "imagenet")


@pytest.fixture(scope="session")
def db_session(tree_session, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("db") / "imagenet-lmdb"
    convert(tree_session, dst, opts())
    return dst


@pytest.fixture
def tree(tree_session, tmp_path) -> Path:
    """A private copy of the session tree, free to modify."""
    return Path(shutil.copytree(tree_session, tmp_path / "imagenet"))


@pytest.fixture
def db(db_session, tmp_path) -> Path:
    """A private copy of the session database, free to damage."""
    return Path(shutil.copytree(db_session, tmp_path / "imagenet-lmdb"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("nvimgcodec") and not NVIMGCODEC_AVAILABLE:
        if os.environ.get("IMAGENET_PACK_REQUIRE_NVIMGCODEC") == "1":
            pytest.fail("nvImageCodec (a test extra) is not installed, and IMAGENET_PACK_REQUIRE_NVIMGCODEC=1")
        pytest.skip("nvImageCodec not installed")
