"""The loader: uint8 batches per epoch, exact mid-epoch resume, a full epoch's length after one, build_loader."""
from __future__ import annotations

import pytest
import torch

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.loader import BatchRing, collate_uint8


def test_loader_uint8_batches_epochs_and_mid_epoch_resume(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    loader = build_loader(ds, 5, workers=2, seed=3)
    first = [(x.clone(), y) for x, y in loader]
    assert all(x.dtype == torch.uint8 and x.shape == (5, 3, 16, 16) for x, _ in first)
    assert len(first) == len(loader) == 24 // 5 and loader.epoch == 1
    second = [y for _, y in loader]
    assert loader.epoch == 2
    # a fresh loader replays epoch 0 exactly (same crops: per (seed, epoch, index))
    again = build_loader(ds, 5, workers=2, seed=3)
    replay = list(again)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, replay))
    # stop after 2 batches of epoch 1, save, resume in a new loader: exactly the rest of epoch 1
    run = build_loader(ds, 5, workers=0, seed=3)
    run.finish_epoch()
    it = iter(run)
    head = [next(it)[1] for _ in range(2)]
    state = run.state_dict()
    assert state == {"epoch": 1, "consumed": 10, "seed": 3, "length": 24, "shuffle": True, "world_size": 1}
    resumed = build_loader(ds, 5, workers=2, seed=3)
    resumed.load_state_dict(state)
    assert len(resumed) == len(loader)  # a full epoch's batches, as before the interruption (the LR schedule's)
    tail = [y for _, y in resumed]
    assert torch.equal(torch.cat(head + tail), torch.cat(second))


def test_leaving_an_epoch_early_loses_nothing_and_the_next_pass_continues(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    loader = build_loader(ds, 4, workers=2, seed=2)
    whole = [y for _, y in build_loader(ds, 4, workers=0, seed=2)]
    got = []
    for _, y in loader:
        got.append(y)
        break
    got += [y for _, y in loader]  # the rest of epoch 0, not a new epoch
    assert torch.equal(torch.cat(got), torch.cat(whole)) and loader.epoch == 1
    assert sum(len(y) for _, y in loader) == 24  # epoch 1 whole


def test_fused_decode_into_decodes_in_place(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    assert ds.batch_shape == (3, 16, 16)
    images = torch.zeros((4, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last, as the ring's
    targets = ds.decode_into([(i, 0) for i in range(4)], images)
    assert all(torch.equal(images[i], ds[(i, 0)][0]) for i in range(4))
    assert targets == [int(t) for t in ds.targets[:4]]
    # in-process (no workers), the same samples are stacked by collate_uint8
    stacked, stacked_targets = collate_uint8([ds[(i, 0)] for i in range(4)])
    assert torch.equal(stacked, images) and stacked_targets.tolist() == targets
    # a transform: no fixed batch shape, so no ring
    transformed = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16), transform=lambda x: x)
    assert transformed.batch_shape is None
    assert not isinstance(build_loader(transformed, 4, workers=1).dataloader.dataset, BatchRing)


def test_train_drops_the_last_partial_batch_eval_keeps_every_sample(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    assert [len(y) for _, y in build_loader(ds, 5, train=True, workers=2)] == [5, 5, 5, 5]
    assert [len(y) for _, y in build_loader(ds, 5, train=False, workers=2)] == [5, 5, 5, 5, 4]


def test_a_hybrid_feed_needs_workers_and_a_fused_decoder(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    with pytest.raises(ValueError, match="needs loader workers"):
        build_loader(ds, 6, workers=0, gpu_share=0.5, device="cpu")
    with pytest.raises(ValueError, match="needs an LmdbImageNet with a fused decoder"):
        build_loader(LmdbImageNet(db_session, "train"), 6, workers=1, gpu_share=0.5, device="cpu")
    with pytest.raises(ValueError, match=r"gpu_share must be a share from 0 to 1"):
        build_loader(ds, 6, workers=1, gpu_share=1.5, device="cpu")


@pytest.mark.parametrize("transform, gives", [
    ("normalised", "torch.float32 tensors"), ("pil", "Image")])
def test_a_dataset_of_float_or_pil_samples_is_refused_when_the_loader_is_built(db_session, transform, gives):
    """build_loader feeds uint8 batches that the device normalises: a dataset already normalised (the
    torchvision transforms a reader knows) or giving PIL images is refused at once, in one line saying what to
    use; decoder='tensor' (uint8) is taken."""
    from torchvision import transforms
    steps = [transforms.Resize((16, 16))]
    if transform == "normalised":
        steps += [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    ds = LmdbImageNet(db_session, "train", transform=transforms.Compose(steps))
    with pytest.raises(ValueError) as refused:
        build_loader(ds, 4, workers=1, device="cpu")
    said = str(refused.value)
    assert "\n" not in said and "uint8" in said and "decoder='tensor'" in said and said.endswith(gives)
    tensors = LmdbImageNet(db_session, "train", decoder="tensor", transform=transforms.Resize((16, 16)))
    images, _ = next(iter(build_loader(tensors, 4, workers=0, device="cpu")))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
