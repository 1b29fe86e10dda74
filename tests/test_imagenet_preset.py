"""Tests for the ``imagenet:DIR`` dataset kind (lrviz.data_imagefolder) and class-stratified subsets
(lrviz.data.stratified_indices / subset), and that every other kind's subsets are unchanged."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from lrviz import data
from lrviz.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    available_datasets,
    finetune_splits,
    get_dataset,
    stratified_indices,
    subset,
    subset_indices,
)
from lrviz.data_imagefolder import imagenet_resize
from lrviz.errors import LrvizError

CLASSES = ("n01440764", "n01443537", "n01484850")
#: (width, height) of the 7 images of each class: landscape, square, portrait, odd, smaller than 256
SIZES = ((400, 300), (256, 256), (300, 400), (517, 231), (224, 224), (480, 360), (333, 500))


def _write(path: Path, size: tuple[int, int], rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def imnet(tmp_path_factory) -> Path:
    """A tiny ImageNet layout: train/ and val/, 3 classes x 7 images of different sizes."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, ext in (("train", "JPEG"), ("val", "png")):
        for c in CLASSES:
            for i, size in enumerate(SIZES):
                _write(root / split / c / f"{c}_{i}.{ext}", size, rng)
    return root


def _reference(path: str, steps) -> torch.Tensor:
    """An independent torchvision pipeline on the image file."""
    with open(path, "rb") as fh:
        img = Image.open(fh).convert("RGB")
    return transforms.Compose(steps)(img)


def _counts(targets, indices) -> list[int]:
    c = collections.Counter(targets[i] for i in indices)
    return [c.get(k, 0) for k in sorted(set(targets))]


# ------------------------------------------------------------------------------ the preset


def test_preset_matches_torchvision_pipeline(imnet):
    ds = get_dataset(f"imagenet:{imnet}", "test")
    assert len(ds) == 21 and ds.classes == list(CLASSES) and ds.num_classes == 3
    assert ds.input_size == (3, 224, 224) and ds.split == "test" and ds.name == f"imagenet:{imnet}"
    ref = [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
           transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    for i in (0, 1, 3, 4, 13):  # 400x300, 256x256, 517x231, 224x224 (upsampled), 480x360
        x, y = ds[i]
        path, label = ds.samples[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert y == label == CLASSES.index(Path(path).parent.name)
        assert torch.equal(x, _reference(path, ref))


def test_model_input_size_scales_the_preset(imnet):
    assert imagenet_resize((224, 224)) == 256
    assert imagenet_resize((160, 160)) == 183
    assert imagenet_resize((299, 299)) == 342  # torchvision's Inception-v3 preset
    assert imagenet_resize((128, 192)) == 219  # the longer side: the crop fits any image shape
    ds = get_dataset(f"imagenet:{imnet}", "test", resize=160)
    assert ds.input_size == (3, 160, 160)
    ref = [transforms.Resize(183), transforms.CenterCrop(160), transforms.ToTensor(),
           transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    for i in (0, 2, 3):
        assert torch.equal(ds[i][0], _reference(ds.samples[i][0], ref))
    rect = get_dataset(f"imagenet:{imnet}", "test", resize=(128, 192))
    assert rect.input_size == (3, 128, 192) and rect[2][0].shape == (3, 128, 192)  # portrait image


def test_grayscale_after_crop(imnet):
    ds = get_dataset(f"imagenet:{imnet}", "test", resize=64, grayscale=True)
    assert ds.input_size == (1, 64, 64)
    ref = [transforms.Resize(73), transforms.CenterCrop(64), transforms.Grayscale(1), transforms.ToTensor(),
           transforms.Normalize((0.5,), (0.5,))]
    assert torch.equal(ds[5][0], _reference(ds.samples[5][0], ref))


def test_augmented_view_is_random_resized_crop(imnet):
    aug = get_dataset(f"imagenet:{imnet}", "train", augment=True)
    steps = [type(t).__name__ for t in aug.transform.transforms]
    assert steps[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    torch.manual_seed(0)
    a = aug[3][0]
    torch.manual_seed(0)
    assert a.shape == (3, 224, 224) and torch.equal(a, aug[3][0])
    plain = get_dataset(f"imagenet:{imnet}", "train")
    assert [type(t).__name__ for t in plain.transform.transforms][:2] == ["Resize", "CenterCrop"]


# ------------------------------------------------------------------------------ layouts and splits


def test_split_selects_the_sub_folder(imnet):
    train = get_dataset(f"imagenet:{imnet}", "train")
    test = get_dataset(f"imagenet:{imnet}", "test")
    assert train.split == "train" and test.split == "test"
    assert all(Path(p).parts[-3] == "train" for p, _ in train.samples)
    assert all(Path(p).parts[-3] == "val" for p, _ in test.samples)
    assert not data.same_images(train, test)
    splits = finetune_splits(test, train, eval_limit=6, seed=0)
    assert not splits.held_out and splits.eval.indices == tuple(subset(test, 6).indices)
    assert _counts(test.targets, splits.eval.indices) == [2, 2, 2]


def test_class_folders_directly_is_one_labelled_set(imnet):
    a = get_dataset(f"imagenet:{imnet / 'val'}", "train")
    b = get_dataset(f"imagenet:{imnet / 'val'}", "test")
    assert a.split is None and b.split is None and len(a) == 21 and a.classes == list(CLASSES)
    assert data.same_images(a, b)
    assert torch.equal(a[0][0], get_dataset(f"imagenet:{imnet}", "test")[0][0])


def test_val_with_fewer_classes_keeps_the_train_labels(tmp_path):
    rng = np.random.default_rng(1)
    for c in CLASSES:
        _write(tmp_path / "train" / c / "a.png", (32, 32), rng)
    _write(tmp_path / "val" / CLASSES[2] / "b.png", (32, 32), rng)
    val = get_dataset(f"imagenet:{tmp_path}", "test", resize=16)
    assert val.classes == list(CLASSES) and val.num_classes == 3 and val.targets == [2]


def test_errors(tmp_path, imnet):
    rng = np.random.default_rng(2)
    with pytest.raises(LrvizError, match="imagenet:DIR"):
        get_dataset("imagenet")
    with pytest.raises(LrvizError, match="does not exist"):
        get_dataset(f"imagenet:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LrvizError, match="neither train/ and val/ sub-folders nor class sub-folders"):
        get_dataset(f"imagenet:{empty}")
    only_train = tmp_path / "only_train"
    _write(only_train / "train" / "c" / "a.png", (32, 32), rng)
    with pytest.raises(LrvizError, match=r"has train/ but no val/, which the 'test' split reads"):
        get_dataset(f"imagenet:{only_train}", "test")
    assert len(get_dataset(f"imagenet:{only_train}", "train")) == 1
    only_val = tmp_path / "only_val"
    _write(only_val / "val" / "c" / "a.png", (32, 32), rng)
    with pytest.raises(LrvizError, match=r"has val/ but no train/, which the 'train' split reads"):
        get_dataset(f"imagenet:{only_val}", "train")
    flat = tmp_path / "flat"
    _write(flat / "train" / "c" / "a.png", (32, 32), rng)
    _write(flat / "val" / "ILSVRC2012_val_00000001.JPEG", (32, 32), rng)
    with pytest.raises(LrvizError, match="no class sub-folders.*valprep"):
        get_dataset(f"imagenet:{flat}", "test")
    extra = tmp_path / "extra"
    _write(extra / "train" / "c" / "a.png", (32, 32), rng)
    _write(extra / "val" / "zebra" / "a.png", (32, 32), rng)
    with pytest.raises(LrvizError, match="lacks: zebra"):
        get_dataset(f"imagenet:{extra}", "test")
    junk = tmp_path / "junk"
    (junk / "c").mkdir(parents=True)
    (junk / "c" / "readme.txt").write_text("not an image")
    with pytest.raises(LrvizError, match="no usable images"):
        get_dataset(f"imagenet:{junk}")
    bad = tmp_path / "bad"
    (bad / "c").mkdir(parents=True)
    (bad / "c" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(LrvizError, match="not a readable image"):
        get_dataset(f"imagenet:{bad}")


def test_registered_and_listed():
    assert "imagenet" in available_datasets()
    with pytest.raises(LrvizError, match="imagenet:DIR"):
        get_dataset("imagenett:/x")
    assert "imagenet:DIR" in data.__doc__


# ------------------------------------------------------------------------------ stratified subsets


def test_stratified_subset_counts_for_every_limit(imnet):
    ds = get_dataset(f"imagenet:{imnet}", "test")
    assert ds.stratify is True and len(ds.targets) == 21
    previous: list[int] = []
    for limit in range(1, 21):
        s = subset(ds, limit)
        idx = list(s.indices)
        assert len(idx) == limit == len(set(idx)) and all(0 <= i < 21 for i in idx)
        q, r = divmod(limit, 3)
        assert sorted(_counts(ds.targets, idx)) == sorted([q + 1] * r + [q] * (3 - r))
        assert idx[: len(previous)] == previous  # nested: a larger limit is a superset
        assert idx == subset_indices(ds, limit) == stratified_indices(ds.targets, limit)
        assert idx == list(subset(get_dataset(f"imagenet:{imnet}", "test"), limit).indices)  # deterministic
        assert s.classes == ds.classes and s.input_size == ds.input_size and s.name == ds.name
        previous = idx
    assert subset(ds, 21) is ds
    assert list(subset(ds, 9, seed=1).indices) != list(subset(ds, 9).indices)
    assert _counts(ds.targets, subset(ds, 9, seed=1).indices) == [3, 3, 3]


def test_stratified_subset_decodes_no_image(imnet):
    ds = get_dataset(f"imagenet:{imnet}", "test")

    def boom(path):
        raise AssertionError(f"decoded {path}")

    ds.loader = boom
    assert len(subset(ds, 7).indices) == 7


def test_stratified_indices_unbalanced_classes():
    sizes = {0: 2, 1: 10, 2: 5, 5: 1}
    targets = [k for k, n in sizes.items() for _ in range(n)]
    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(3)).tolist()
    targets = [targets[i] for i in perm]  # classes interleaved in dataset order
    n = len(targets)
    for seed in (0, 7):
        full = stratified_indices(targets, n - 1, seed)
        for limit in range(1, n):
            idx = stratified_indices(targets, limit, seed)
            assert idx == full[:limit] and len(set(idx)) == limit
            counts = collections.Counter(targets[i] for i in idx)
            top = max(counts.values())
            for k, size in sizes.items():  # water-filling: short classes give all, the rest differ by <= 1
                assert min(size, top - 1) <= counts.get(k, 0) <= size
    assert stratified_indices(targets, None) == list(range(n)) == stratified_indices(targets, n + 5)
    assert stratified_indices(torch.tensor(targets), 9, 7) == stratified_indices(targets, 9, 7)


def test_a_class_order_ignores_other_classes():
    """A class's images are chosen by its own seeded permutation: growing another class keeps them."""
    a = [0] * 6 + [1] * 6
    b = [0] * 6 + [1] * 6 + [0] * 4  # four more images of class 0, appended
    pick = lambda t, lim: sorted(i for i in stratified_indices(t, lim) if t[i] == 1)  # noqa: E731
    assert pick(a, 8) == pick(b, 8)


# ------------------------------------------------------------------------------ other kinds unchanged


def test_other_kinds_keep_their_random_subsets(tmp_path):
    fm = get_dataset("fashion-mnist-sample", "test")
    assert not getattr(fm, "stratify", False)
    n = len(fm)
    for seed in (0, 3):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for limit in (1, 100, 500, n - 1):
            assert list(subset(fm, limit, seed=seed).indices) == perm[:limit].tolist()
            assert subset_indices(fm, limit, seed) == subset_indices(n, limit, seed) == perm[:limit].tolist()
    syn = get_dataset("synthetic:1,4,4,2,50")
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    assert list(subset(syn, 10).indices) == perm[:10].tolist()
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        for i in range(4):
            _write(tmp_path / c / f"{i}.png", (20, 20), rng)
    folder = get_dataset(f"imagefolder:{tmp_path}", resize=8)
    assert not getattr(folder, "stratify", False)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert list(subset(folder, 3).indices) == perm[:3].tolist()


def test_stratify_without_targets_is_an_error():
    ds = get_dataset("synthetic:1,4,4,2,20")
    ds.stratify = True
    ds.targets = [0, 1]  # not one per item
    with pytest.raises(LrvizError, match="targets"):
        subset(ds, 5)
