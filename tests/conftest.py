"""Shared fixtures: tiny ImageNet-shaped trees of real JPEG files, built fresh for each test session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagenet_pack import ConvertOptions, convert
from imagenet_pack.synthetic import make_sample_tree


def small_tree(root: Path, *, classes: int = 4, per_class: int = 6, seed: int = 0) -> Path:
    """classes x per_class train and classes x 3 val JPEGs of 48x64 px (portrait every third)."""
    return make_sample_tree(root, classes=classes, train_per_class=per_class, val_per_class=3,
                            size=(48, 64), seed=seed)


@pytest.fixture(scope="session")
def tree_session(tmp_path_factory) -> Path:
    return small_tree(tmp_path_factory.mktemp("tree") / "imagenet")


@pytest.fixture(scope="session")
def db_session(tree_session, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("db") / "imagenet-lmdb"
    convert(tree_session, dst, ConvertOptions(workers=1, progress=False))
    return dst


@pytest.fixture
def tree(tree_session, tmp_path) -> Path:
    """A private copy of the session tree, free to modify."""
    return Path(shutil.copytree(tree_session, tmp_path / "imagenet"))


@pytest.fixture
def db(db_session, tmp_path) -> Path:
    """A private copy of the session database, free to damage."""
    return Path(shutil.copytree(db_session, tmp_path / "imagenet-lmdb"))
