"""Tests for lrviz.data and the dataset kinds behind it (lrviz.data_*)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lrviz import data, data_fashion_mnist
from lrviz.data import available_datasets, get_dataset, make_loader, register_dataset, subset
from lrviz.errors import LrvizError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)",
)


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def _write_tiny_fmnist(folder: Path, n: int = 6) -> np.ndarray:
    """Write a valid tiny test split (n images) and return the images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", 0x803, (n, 28, 28), images.tobytes())
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", 0x801, (n,), labels.tobytes())
    return images


@pytest.fixture
def isolated_search(tmp_path, monkeypatch):
    """No system folder, an empty cache and no env var: only what the test provides."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data_fashion_mnist, "SYSTEM_DATA_DIRS", (empty / "system",))
    monkeypatch.setattr(data_fashion_mnist, "cache_dir", lambda: empty / "cache")
    monkeypatch.delenv("LRVIZ_DATA_DIR", raising=False)
    return empty


# ------------------------------------------------------------------------------ Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_test_split_from_system_folder():
    ds = get_dataset("fashion-mnist", "test", root=FMNIST_DIR)
    assert len(ds) == 10000
    assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.input_size == (1, 28, 28)
    assert ds.name == "fashion-mnist"
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert isinstance(y, int) and 0 <= y <= 9
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:3000]
    batch = torch.stack([ds[int(i)][0] for i in idx])
    labels = torch.tensor([ds[int(i)][1] for i in idx])
    assert abs(float(batch.mean())) < 0.05
    assert abs(float(batch.std()) - 1.0) < 0.05
    assert int(labels.min()) == 0 and int(labels.max()) == 9


@needs_fmnist
def test_fashion_mnist_default_search_finds_system_folder(monkeypatch):
    monkeypatch.delenv("LRVIZ_DATA_DIR", raising=False)
    ds = get_dataset("fashion-mnist")
    assert len(ds) == 10000


@needs_fmnist
def test_fashion_mnist_resize_and_custom_norm():
    ds = get_dataset("fashion-mnist", root=FMNIST_DIR, resize=32, mean=[0.0], std=[1.0])
    x, _ = ds[3]
    assert x.shape == (1, 32, 32)
    assert ds.input_size == (1, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # plain /255 with mean 0, std 1


@needs_fmnist
def test_fashion_mnist_train_split_and_augment_deterministic():
    ds = get_dataset("fashion-mnist", "train", root=FMNIST_DIR, augment=True)
    assert len(ds) == 60000
    torch.manual_seed(1)
    a = [ds[i][0] for i in range(5)]
    torch.manual_seed(1)
    b = [ds[i][0] for i in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    plain = get_dataset("fashion-mnist", "train", root=FMNIST_DIR)
    assert any(not torch.equal(ds[i][0], plain[i][0]) for i in range(20))


def test_fashion_mnist_from_root_and_env(tmp_path, isolated_search, monkeypatch):
    images = _write_tiny_fmnist(tmp_path)
    ds = get_dataset("fashion-mnist", root=tmp_path, mean=[0.0], std=[1.0])
    assert len(ds) == 6
    assert torch.allclose(ds[2][0][0], torch.from_numpy(images[2]).float() / 255)
    assert [ds[i][1] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    # env var with torchvision layout
    env_root = tmp_path / "envroot"
    raw = env_root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_tiny_fmnist(raw, n=4)
    monkeypatch.setenv("LRVIZ_DATA_DIR", str(env_root))
    assert len(get_dataset("fashion-mnist")) == 4


def test_fashion_mnist_offline_error(isolated_search, monkeypatch):
    calls = []

    def offline(target):
        calls.append(target)
        raise OSError("Name or service not known")

    monkeypatch.setattr(data_fashion_mnist, "_download_fashion_mnist", offline)
    with pytest.raises(LrvizError, match="offline") as info:
        get_dataset("fashion-mnist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-root" in msg
    assert str(isolated_search / "system") in msg
    assert "Name or service not known" in msg
    assert len(calls) == 1


def test_fashion_mnist_download_is_used_when_missing(isolated_search, monkeypatch):
    def fake_download(target):
        raw = Path(target) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        _write_tiny_fmnist(raw, n=3)

    monkeypatch.setattr(data_fashion_mnist, "_download_fashion_mnist", fake_download)
    assert len(get_dataset("fashion-mnist")) == 3


def test_fashion_mnist_corrupt_files(tmp_path, isolated_search):
    # not gzip at all
    bad = tmp_path / "notgz"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"nor this")
    with pytest.raises(LrvizError, match="corrupt"):
        get_dataset("fashion-mnist", root=bad)
    # wrong magic number
    magic = tmp_path / "magic"
    magic.mkdir()
    _write_tiny_fmnist(magic)
    _write_idx(magic / "t10k-images-idx3-ubyte.gz", 0x802, (6, 28, 28), bytes(6 * 28 * 28))
    with pytest.raises(LrvizError, match="magic number"):
        get_dataset("fashion-mnist", root=magic)
    # truncated payload
    short = tmp_path / "short"
    short.mkdir()
    _write_tiny_fmnist(short)
    _write_idx(short / "t10k-images-idx3-ubyte.gz", 0x803, (6, 28, 28), bytes(100))
    with pytest.raises(LrvizError, match="truncated"):
        get_dataset("fashion-mnist", root=short)
    # labels that do not match the images
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    _write_tiny_fmnist(mismatch)
    _write_idx(mismatch / "t10k-labels-idx1-ubyte.gz", 0x801, (5,), bytes(5))
    with pytest.raises(LrvizError, match="6 images but"):
        get_dataset("fashion-mnist", root=mismatch)


def test_fashion_mnist_bad_options(tmp_path, isolated_search):
    _write_tiny_fmnist(tmp_path)
    with pytest.raises(LrvizError, match="channel"):
        get_dataset("fashion-mnist", root=tmp_path, mean=[0.1, 0.2, 0.3], std=[1, 1])
    with pytest.raises(LrvizError, match="resize"):
        get_dataset("fashion-mnist", root=tmp_path, resize=0)
    with pytest.raises(LrvizError, match="takes no argument"):
        get_dataset("fashion-mnist:foo", root=tmp_path)


# ------------------------------------------------------------------------------ generic errors


def test_unknown_dataset_lists_available():
    with pytest.raises(LrvizError, match="Unknown dataset 'cifar99'") as info:
        get_dataset("cifar99")
    for name in ("fashion-mnist", "imagefolder", "synthetic"):
        assert name in str(info.value)
    assert {"fashion-mnist", "imagefolder", "synthetic"} <= set(available_datasets())


def test_bad_split():
    with pytest.raises(LrvizError, match="'train' or 'test'"):
        get_dataset("synthetic", "validation")


def test_register_dataset_duplicate_raises():
    with pytest.raises(LrvizError, match="already registered"):
        register_dataset("synthetic")(lambda *a, **k: None)


def test_register_custom_dataset(monkeypatch):
    monkeypatch.setattr(data, "_DATASETS", dict(data._DATASETS))

    @register_dataset("ones")
    def _ones(arg, split, **kwargs):
        return torch.utils.data.TensorDataset(torch.ones(int(arg or 2), 1, 2, 2))

    assert "ones" in available_datasets()
    assert len(get_dataset("ones:5")) == 5


# ------------------------------------------------------------------------------ imagefolder


@pytest.fixture
def image_dir(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_imagefolder_rgb(image_dir):
    ds = get_dataset(f"imagefolder:{image_dir}", resize=16)
    assert len(ds) == 6
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.split is None  # one labelled set: the split is ignored
    assert ds.input_size == (3, 16, 16)
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    default = get_dataset(f"imagefolder:{image_dir}")
    assert default[0][0].shape == (3, 224, 224)


def test_imagefolder_grayscale(image_dir):
    ds = get_dataset(f"imagefolder:{image_dir}", resize=(8, 12), grayscale=True)
    x, _ = ds[0]
    assert x.shape == (1, 8, 12)
    assert ds.input_size == (1, 8, 12)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # mean 0.5, std 0.5


def test_imagefolder_errors(tmp_path):
    with pytest.raises(LrvizError, match="does not exist"):
        get_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(LrvizError, match="sub-folder"):
        get_dataset(f"imagefolder:{tmp_path}")  # exists but has no class folders
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("not an image")
    with pytest.raises(LrvizError, match="no usable images"):
        get_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(LrvizError, match="imagefolder:DIR"):
        get_dataset("imagefolder")


# ------------------------------------------------------------------------------ synthetic


def test_synthetic_default_shapes_and_determinism():
    torch.manual_seed(123)
    a = get_dataset("synthetic")
    torch.manual_seed(999)
    b = get_dataset("synthetic")
    assert len(a) == 256 and a.input_size == (3, 32, 32) and a.num_classes == 10
    for i in (0, 17, 255):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    labels = [a[i][1] for i in range(len(a))]
    assert min(labels) == 0 and max(labels) == 9
    train = get_dataset("synthetic", "train")
    assert not torch.equal(train[0][0], a[0][0])


def test_synthetic_custom_spec_and_errors():
    ds = get_dataset("synthetic:1,8,8,3,20", resize=16)
    assert len(ds) == 20 and ds.input_size == (1, 16, 16)
    assert ds.classes == ["class_0", "class_1", "class_2"]
    assert ds[0][0].shape == (1, 16, 16)
    assert {ds[i][1] for i in range(20)} == {0, 1, 2}
    with pytest.raises(LrvizError, match="synthetic:C,H,W,K,N"):
        get_dataset("synthetic:1,2,3")
    with pytest.raises(LrvizError, match="synthetic:C,H,W,K,N"):
        get_dataset("synthetic:a,b,c,d,e")
    with pytest.raises(LrvizError, match="classes >= 2"):
        get_dataset("synthetic:3,8,8,1,10")


def test_synthetic_is_separable_by_templates():
    ds = get_dataset("synthetic:1,8,8,4,200")
    x = torch.stack([ds[i][0] for i in range(len(ds))]).flatten(1)
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    centroids = torch.stack([x[y == k].mean(0) for k in range(4)])
    test = get_dataset("synthetic:1,8,8,4,200", "test")
    xt = torch.stack([test[i][0] for i in range(len(test))]).flatten(1)
    yt = torch.tensor([test[i][1] for i in range(len(test))])
    pred = torch.cdist(xt, centroids).argmin(1)
    assert float((pred == yt).float().mean()) > 0.9


# ------------------------------------------------------------------------------ subset / loader


def test_subset_deterministic_and_nested():
    ds = get_dataset("synthetic:1,4,4,2,50")
    s10 = subset(ds, 10)
    s20 = subset(ds, 20)
    assert len(s10) == 10 and len(s20) == 20
    assert list(s10.indices) == list(subset(ds, 10).indices)
    assert list(s20.indices[:10]) == list(s10.indices)
    assert list(subset(ds, 10, seed=1).indices) != list(s10.indices)
    assert s10.classes == ds.classes and s10.num_classes == 2 and s10.input_size == (1, 4, 4)
    assert torch.equal(s10[3][0], ds[s10.indices[3]][0])
    assert subset(ds, None) is ds
    assert subset(ds, 50) is ds and subset(ds, 1000) is ds
    with pytest.raises(LrvizError, match="at least 1"):
        subset(ds, 0)
    with pytest.raises(LrvizError, match="positive integer"):
        subset(ds, 2.5)


def test_make_loader():
    ds = get_dataset("synthetic:1,4,4,2,10")
    loader = make_loader(ds, batch_size=4)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 1, 4, 4) and batches[0][1].dtype == torch.int64
    def epoch(**kwargs):
        return torch.cat([x.flatten(1) for x, _ in make_loader(ds, 3, **kwargs)])

    assert torch.equal(epoch(shuffle=True, seed=7), epoch(shuffle=True, seed=7))
    assert not torch.equal(epoch(shuffle=True, seed=7), epoch())
    assert torch.equal(epoch(), torch.stack([ds[i][0].flatten() for i in range(10)]))
    with pytest.raises(LrvizError, match="batch_size"):
        make_loader(ds, batch_size=0)


def test_datasets_know_their_split_and_subsets_their_positions():
    assert {"fashion-mnist-sample", "fashion-mnist-train-sample"} <= set(available_datasets())
    train = get_dataset("synthetic:1,4,4,2,8", "train")
    assert train.split == "train" and get_dataset("synthetic:1,4,4,2,8").split == "test"
    sub = subset(train, 3, seed=5)
    assert sub.split == "train" and sub.name == train.name  # forwarded by DatasetSubset
    assert sub.indices == data.subset_indices(8, 3, seed=5) and data.subset_indices(8, None) == list(range(8))
    assert data.train_data_name("fashion-mnist-sample") == "fashion-mnist-train-sample"
    assert data.train_data_name("imagefolder:/x") == "imagefolder:/x" and data.train_data_name("fashion-mnist") == "fashion-mnist"
    assert data.images_label(get_dataset("fashion-mnist-sample")) == "test-sample images"


def test_bundled_sample_matches_full_test_set():
    """The bundled sample is what its recipe (lrviz.data_fashion_mnist's docstring) draws from the
    full test set: the first 200 of each class in a seed-0 permutation, in test-set order."""
    from lrviz.data import SAMPLE_PATH

    sample = get_dataset("fashion-mnist-sample")
    assert len(sample) == 2000 and sample.input_size == (1, 28, 28)
    assert np.bincount(sample.targets).tolist() == [200] * 10
    assert SAMPLE_PATH.stat().st_size <= 2 * 1024 * 1024
    with pytest.raises(LrvizError, match="test-set sample only"):
        get_dataset("fashion-mnist-sample", "train")
    if not FMNIST_DIR.is_dir():
        pytest.skip("full Fashion-MNIST not installed")
    full = get_dataset("fashion-mnist")
    with np.load(SAMPLE_PATH) as z:
        idx = z["indices"]
    labels = np.asarray(full.targets)
    order = np.random.default_rng(0).permutation(len(labels))
    recipe = np.sort(np.concatenate([order[labels[order] == c][:200] for c in range(10)]))
    assert np.array_equal(idx, recipe)
    for i in range(len(sample)):  # every image and label, after the same transform
        x, y = sample[i]
        fx, fy = full[int(idx[i])]
        assert y == fy and torch.equal(x, fx)
