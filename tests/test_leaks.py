"""No leaks: fine-tuning never trains on, nor picks its epoch on, the images an accuracy is reported on.

:func:`lrviz.data.finetune_splits` cuts train / validation / evaluation parts that share no image, for
every kind of source: the bundled samples (train sample → test sample), the full Fashion-MNIST (when
the Debian package is installed), synthetic data (train → test split), and one labelled set (an
ImageFolder: three ways, the evaluation part held out). ``lrviz compress --finetune`` records the
split in metrics.json and reports only on its evaluation part; the dashboard's Fine-tune page keeps
the split with the model and the Present page measures both models on held-out images only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lrviz import data  # noqa: E402
from lrviz.cli import main  # noqa: E402
from lrviz.data import finetune_splits, get_dataset, overlaps  # noqa: E402
from lrviz.errors import LrvizError  # noqa: E402

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
APP = Path(__file__).resolve().parents[1] / "app.py"


def _image_folder(root: Path, classes: int = 10, per_class: int = 12, size: int = 28) -> Path:
    """``classes`` folders of ``per_class`` distinct grayscale PNGs (Fashion-MNIST sample images when 28×28)."""
    from PIL import Image

    with np.load(data.SAMPLE_PATH) as z:
        images, labels = z["images"][:, 0], z["labels"]
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            img = Image.fromarray(images[i])
            (img if size == 28 else img.resize((size, size))).save(root / f"class{c}" / f"{j:03d}.png")
    return root


def _content(dataset, indices) -> set[str]:
    """SHA-1 of every item's image tensor (what the model sees, before any augmentation)."""
    return {hashlib.sha1(dataset[int(i)][0].numpy().tobytes()).hexdigest() for i in indices}


def _check(splits, eval_data, train_data=None) -> None:
    rec = json.loads(json.dumps(splits.record()))  # the record survives JSON (metrics.json, session state)
    assert overlaps(rec) == []
    t, v, e = (set(p.indices) for p in splits.parts)
    assert min(len(t), len(v), len(e)) > 0
    if splits.held_out:  # one set: positions in it, pairwise disjoint, within it
        assert not (t & v) and not (t & e) and not (v & e)
        assert t | v | e <= set(range(len(eval_data)))
        assert rec["train"]["source"] == rec["val"]["source"] == rec["eval"]["source"]
    else:  # train and validation from the training data, evaluation from the other (test) split
        assert not (t & v) and t | v <= set(range(len(train_data)))
        assert rec["train"]["source"] == rec["val"]["source"] != rec["eval"]["source"]
    assert [len(p.dataset) for p in splits.parts] == [p.n for p in splits.parts]
    for p, r in zip(splits.parts, (rec["train"], rec["val"], rec["eval"])):
        assert r["n"] == p.n and r["indices"] == list(p.indices)
    assert "never used for training or selection" in splits.description


def _check_content(splits, limit: int = 3000) -> None:
    """No image of the evaluation part equals one of the train or validation parts, byte for byte."""
    seen = [_content(p.dataset, range(min(p.n, limit))) for p in splits.parts]
    assert not (seen[0] & seen[2]) and not (seen[1] & seen[2]) and not (seen[0] & seen[1])


def test_bundled_train_sample_is_separate_from_the_test_sample():
    test = get_dataset("fashion-mnist-sample")
    train = get_dataset("fashion-mnist-train-sample", "train")
    assert len(train) == 3000 and np.bincount(train.targets).tolist() == [300] * 10
    assert data.TRAIN_SAMPLE_PATH.stat().st_size <= 2 * 1024 * 1024
    assert data.train_data_name("fashion-mnist-sample") == "fashion-mnist-train-sample"
    with pytest.raises(LrvizError, match="train-set sample only"):
        get_dataset("fashion-mnist-train-sample", "test")
    splits = finetune_splits(test, train)
    assert not splits.held_out and (splits.train.n, splits.val.n, splits.eval.n) == (2400, 600, 2000)
    assert splits.train.source == "fashion-mnist:train" and splits.eval.source == "fashion-mnist:test"
    _check(splits, test, train)
    _check_content(splits)


@pytest.mark.skipif(not HAVE_FMNIST, reason="full Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_bundled_train_sample_is_its_recipe_of_the_train_split():
    """The train sample is what :func:`lrviz.data_fashion_mnist.sample_indices` draws from the full train split."""
    from lrviz.data_fashion_mnist import sample_indices

    full = get_dataset("fashion-mnist", "train")
    sample = get_dataset("fashion-mnist-train-sample", "train")
    want = sample_indices(np.asarray(full.targets), 300, 0)
    assert sample.source_indices == want.tolist()
    for i in (0, 1, 1500, 2999):
        assert (sample[i][0] == full[int(want[i])][0]).all() and sample[i][1] == full[int(want[i])][1]


@pytest.mark.skipif(not HAVE_FMNIST, reason="full Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_full_fashion_mnist_splits_are_disjoint():
    test, train = get_dataset("fashion-mnist", "test"), get_dataset("fashion-mnist", "train")
    splits = finetune_splits(test, train, train_limit=5000, val_limit=1000)
    assert (splits.train.n, splits.val.n, splits.eval.n) == (5000, 1000, 10000)
    _check(splits, test, train)
    # the bundled samples map to the same sources: a train sample and the full test set share nothing
    mixed = finetune_splits(test, get_dataset("fashion-mnist-train-sample", "train"))
    assert mixed.train.source == "fashion-mnist:train" and overlaps(mixed.record()) == []
    _check_content(splits, limit=2000)


def test_image_folder_is_split_three_ways(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    test = get_dataset(f"imagefolder:{root}", grayscale=True, resize=28)
    train = get_dataset(f"imagefolder:{root}", "train", grayscale=True, resize=28)
    assert test.split is None and data.same_images(train, test)
    splits = finetune_splits(test, train)
    assert splits.held_out and (splits.train.n, splits.val.n, splits.eval.n) == (72, 18, 30)
    _check(splits, test)
    _check_content(splits)
    assert "held-out" in splits.description and "split three ways" in splits.description
    # the same three parts whatever the limits (a limit only drops images of its own part)
    small = finetune_splits(test, train, train_limit=10, val_limit=5, eval_limit=7)
    assert set(small.train.indices) <= set(splits.train.indices) and set(small.eval.indices) <= set(splits.eval.indices)
    aug = get_dataset(f"imagefolder:{root}", "train", grayscale=True, resize=28, augment=True)
    assert finetune_splits(test, train, augmented=aug).train.dataset.dataset is aug  # augmentation: train part only


def test_synthetic_and_one_set_without_train_split():
    test, train = get_dataset("synthetic:1,8,8,4,120"), get_dataset("synthetic:1,8,8,4,120", "train")
    splits = finetune_splits(test, train, eval_limit=50)
    assert (splits.train.n, splits.val.n, splits.eval.n) == (96, 24, 50)
    assert list(splits.eval.indices) == data.subset_indices(120, 50)  # the images an evaluation with --limit 50 uses
    _check(splits, test, train)
    _check_content(splits)
    alone = finetune_splits(test)  # no training data at all: three ways
    assert alone.held_out
    _check(alone, test)
    with pytest.raises(LrvizError, match="too few"):
        finetune_splits(get_dataset("synthetic:1,8,8,4,2"))
    with pytest.raises(LrvizError, match="val_fraction"):
        finetune_splits(test, train, val_fraction=1.0)


def test_overlaps_finds_a_shared_image():
    rec = finetune_splits(get_dataset("synthetic:1,8,8,4,40")).record()
    rec["eval"]["source_indices"] = rec["eval"]["source_indices"] + rec["train"]["source_indices"][:1]
    assert overlaps(rec) == [f"train and eval share 1 image(s) of {rec['train']['source']}"]


# ---- the command line ---------------------------------------------------------------------------------------

MODEL = ["helpers:tiny_net", "--input-size", "3,16,16"]


def _compress(tmp_path, capsys, *extra, model=MODEL):
    out = tmp_path / "out"
    rc = main(["compress", *model, "--plan", "uniform:0.5", "--out", str(out), "--finetune", "1", *extra])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads((out / "metrics.json").read_text()), stdout, err


def test_compress_finetune_records_disjoint_splits(tmp_path, capsys):
    metrics, stdout, err = _compress(tmp_path, capsys, "--data", "synthetic:3,16,16,10,96", "--train-limit", "48",
                                     "--val-limit", "16", "--limit", "64")
    rec = metrics["finetune"]["data"]
    assert overlaps(rec) == [] and not rec["held_out"]
    assert (rec["train"]["n"], rec["val"]["n"], rec["eval"]["n"]) == (48, 16, 64)
    assert not set(rec["train"]["indices"]) & set(rec["val"]["indices"])
    assert rec["train"]["source"] == "synthetic:3,16,16,10,96:train" and rec["eval"]["source"] == "synthetic:3,16,16,10,96:test"
    acc = metrics["accuracy"]
    assert acc["original"]["n"] == acc["compressed_before_finetune"]["n"] == acc["compressed"]["n"] == 64
    assert rec["description"] in err and "never used for training or selection" in stdout


def test_compress_finetune_on_one_image_folder_reports_only_held_out_images(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", per_class=4, size=16)
    metrics, stdout, _ = _compress(tmp_path, capsys, "--data", f"imagefolder:{root}")
    rec = metrics["finetune"]["data"]
    assert rec["held_out"] and overlaps(rec) == []
    assert (rec["train"]["n"], rec["val"]["n"], rec["eval"]["n"]) == (24, 6, 10)
    assert {rec[p]["source"] for p in ("train", "val", "eval")} == {f"imagefolder:{root}"}
    assert all(metrics["accuracy"][k]["n"] == 10 for k in ("original", "compressed_before_finetune", "compressed"))
    assert "10 held-out images of" in stdout


def test_compress_finetune_offline_on_the_bundled_train_sample(tmp_path, capsys):
    metrics, _, _ = _compress(tmp_path, capsys, "--data", "fashion-mnist-sample", "--train-data", "fashion-mnist-train-sample",
                              "--train-limit", "64", "--val-limit", "32", "--limit", "100", model=["demo"])
    rec = metrics["finetune"]["data"]
    assert rec["train"]["source"] == rec["val"]["source"] == "fashion-mnist:train" and rec["eval"]["source"] == "fashion-mnist:test"
    assert overlaps(rec) == [] and metrics["accuracy"]["compressed"]["n"] == 100


# ---- the dashboard ---------------------------------------------------------------------------------------------


@pytest.fixture
def app(monkeypatch):
    from helpers import dashboard_without_bundled

    return dashboard_without_bundled(monkeypatch, 200)


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _finetune(at, **inputs):
    at.switch_page("pages/finetune.py")
    _ok(at.run())
    at.number_input(key="ft_epochs").set_value(1)
    for key, value in inputs.items():
        at.number_input(key=key).set_value(value)
    at.button(key="ft_start").click()
    _ok(at.run())
    assert at.session_state["_ft_job"]["job"].wait(150)
    _ok(at.run())
    assert any("Fine-tuning finished" in s.value for s in at.success), [e.value for e in at.error]
    (ft,) = at.session_state["_finetuned"].values()
    assert overlaps(ft["split"]) == []
    return ft


def _present(at, n=None):
    at.switch_page("pages/present.py")
    _ok(at.run())
    if n is not None:
        at.number_input(key="present_n").set_value(n)
    at.button(key="present_measure").click()
    _ok(at.run())
    assert not at.error, [e.value for e in at.error]
    (meas,) = at.session_state["_present"].values()
    caption = next(c.value for c in at.caption if c.value.startswith("Accuracy basis"))
    return meas, caption


def test_dashboard_finetunes_on_train_sample_and_presents_on_test_sample(app):
    at = app
    ft = _finetune(at, ft_train_n=128, ft_val_n=50)
    split = ft["split"]
    assert split["train"]["source"] == split["val"]["source"] == "fashion-mnist:train"
    assert split["eval"]["source"] == "fashion-mnist:test" and (split["train"]["n"], split["val"]["n"]) == (128, 50)
    meas, caption = _present(at, 100)
    assert meas["r0"].n == meas["r1"].n == 100 and set(meas["indices"]) <= set(split["eval"]["indices"])
    kept = (f"epoch {ft['best_epoch']} kept, chosen on 50 other train-sample images" if ft["best_epoch"] else
            "no epoch beat the decomposed weights on 50 other train-sample images, so those are kept")
    assert caption == (f"Accuracy basis — after: fine-tuned 1 epoch on 128 train-sample images ({kept}); both models evaluated "
                       "on 100 test-sample images never used for training or selection."), caption
    at.button(key="build_report").click()
    _ok(at.run())
    html = at.session_state["_report"][1].decode("utf-8")
    assert caption.removeprefix("Accuracy basis — ").rstrip(".") in html  # the report names the same images


def test_dashboard_presents_a_model_tuned_on_one_image_folder_only_on_held_out_images(app, tmp_path):
    root = _image_folder(tmp_path / "imgs", per_class=16)
    at = app
    at.radio(key="data_kind").set_value("imagefolder")
    _ok(at.run())
    at.text_input(key="imagefolder_path").set_value(str(root))
    _ok(at.run())
    ft = _finetune(at)
    split = ft["split"]
    assert split["held_out"] and (split["train"]["n"], split["val"]["n"], split["eval"]["n"]) == (96, 24, 40)
    t0 = time.perf_counter()
    meas, caption = _present(at)
    assert time.perf_counter() - t0 < 120
    held = set(split["eval"]["indices"])
    assert meas["r0"].n == meas["r1"].n == 40 and set(meas["indices"]) == held  # both models, the held-out images only
    assert not held & (set(split["train"]["indices"]) | set(split["val"]["indices"]))
    assert "40 held-out images" in caption and "never used for training or selection" in caption
    assert at.number_input(key="present_n").max == 40
