"""Concurrent users of shared objects and shared files.

* Two dashboard sessions (threads) editing plans on one cached model: the model Streamlit shares
  (``st.cache_resource``) and its shared :class:`lrviz.FactorCache` stay untouched and every planned
  model computes what a private, serial computation gives — two threads on the library objects the
  pages use, and two Streamlit ``AppTest`` sessions taking turns (AppTest is not thread-safe).
* Two processes measuring layer sensitivities of the same cache key at once: every layer is measured
  once, the result equals a single-process run, and every cache file loads; a torn cache file is
  measured again instead of crashing, and a layer locked by someone else is taken up last.
"""

import hashlib
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lrviz import FactorCache, analyze, compress, make_plan
from lrviz import sources
from lrviz.data import get_dataset
from lrviz.evaluate import evaluate
from lrviz.sensitivity import LOCK_DIR, _layer_file, _load_layer, load_sensitivity, measure_sensitivity
from lrviz.storage import FileLock

TINY_DATA = "synthetic:3,16,16,10,64"
TINY_N = 48


def tensor_hash(module: torch.nn.Module) -> str:
    """SHA-256 over the names and bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ==================================================================================================
# (a) two sessions on one cached model
# ==================================================================================================


@pytest.fixture(scope="module")
def shared_demo():
    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    analysis = analyze(loaded.module, loaded.input_size, loaded.name)
    return loaded, analysis, get_dataset("fashion-mnist-sample")


def _plans(analysis, seed: int, count: int):
    """Presets and random slider positions, different for every session."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        if i % 2 == 0:
            spec = ["uniform:0.5", "energy:0.9", "vbmf:0.5", "ratio:3"][(i // 2 + seed) % 4]
            out.append(make_plan(analysis, spec))
        else:
            ranks = {}
            for l in analysis.layers:
                ranks[l.name] = tuple(int(torch.randint(1, f + 1, (1,), generator=g)) for f in l.full_ranks)
            out.append(make_plan(analysis, "full").with_ranks(ranks))
    return out


def test_two_sessions_editing_plans_leave_the_shared_model_unchanged(shared_demo):
    loaded, analysis, ds = shared_demo
    module = loaded.module  # what st.cache_resource hands to every session
    original = sources.inference_copy(module)  # the shared eval-mode copy used for the original's inference
    factors = FactorCache(module)  # the shared cache of bases (cached_factors)
    before, before_orig = tensor_hash(module), tensor_hash(original)
    flags = [m.training for m in module.modules()]
    x = torch.stack([ds[i][0] for i in range(64)])
    plans = {s: _plans(analysis, seed=s, count=6) for s in (1, 2)}
    got: dict[int, list] = {1: [], 2: []}
    errors = []
    start = threading.Barrier(2)

    def session(s):
        try:
            start.wait()
            for plan in plans[s]:
                model = compress(module, plan, factors)  # Ranks page: planned model from cached factors
                model.eval()
                with torch.inference_mode():
                    y = model(x)
                res = evaluate(model, ds, limit=100)  # quick evaluation
                base = evaluate(original, ds, limit=100)  # baseline of the original
                got[s].append((y, res.top1, res.loss, base.top1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert tensor_hash(module) == before and tensor_hash(original) == before_orig
    assert [m.training for m in module.modules()] == flags

    # each planned model against a private, serial computation from fresh factors
    fresh = FactorCache(module)
    base_ref = evaluate(original, ds, limit=100).top1
    for s in (1, 2):
        assert len(got[s]) == len(plans[s])
        for plan, (y, top1, loss, base_top1) in zip(plans[s], got[s]):
            ref = compress(module, plan, fresh).eval()
            with torch.inference_mode():
                y_ref = ref(x)
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
            r = evaluate(ref, ds, limit=100)
            assert top1 == r.top1 and loss == pytest.approx(r.loss, rel=1e-4) and base_top1 == base_ref
    # the plans differ, so the outputs do: a mix-up between the sessions would show
    assert not torch.allclose(got[1][1][0], got[2][1][0])
    assert tensor_hash(module) == before


def test_two_apptest_sessions_moving_sliders_leave_the_cached_model_unchanged():
    """Two dashboard sessions, their reruns interleaved, on one cached model.

    ``AppTest`` itself is not thread-safe (two instances run from two threads collide in Streamlit's
    script-run bookkeeping: duplicate element keys, missing widget state), so the sessions take turns
    here; real concurrency is the test above, on the objects the pages use.
    """
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the app's pages/ helpers, importable as app.py imports them
    from pages._state import slider_key

    app = str(root / "app.py")
    sessions = [AppTest.from_file(app, default_timeout=120).run() for _ in range(2)]
    for at in sessions:
        at.select_slider(key="quick_n").set_value(100).run()
        at.switch_page("pages/ranks.py").run()
        assert not at.exception, [e.value for e in at.exception]
    ctxs = [at.session_state["_lrviz_ctx"] for at in sessions]
    model, mid = ctxs[0].loaded.module, ctxs[0].model_id
    assert ctxs[1].loaded.module is model  # one object, as st.cache_resource shares it
    before = tensor_hash(model)
    layers = [l for l in ctxs[0].analysis.layers if l.kind == "tucker2" and min(l.full_ranks) > 4][:6]
    for i, l in enumerate(layers):
        for s, at in enumerate(sessions):  # the two sessions move different sliders, turn by turn
            at.slider(key=slider_key(mid, l.name, (i + s) % 2)).set_value(1 + (s + i) % 4).run()
            assert not at.exception, [e.value for e in at.exception]
    for at in sessions:
        at.button(key="quick_eval").click().run()
        assert not at.exception, [e.value for e in at.exception]
    plans = [dict(at.session_state["_plans"][mid]["ranks"]) for at in sessions]
    for s, ranks in enumerate(plans):  # each session kept its own plan
        for i, l in enumerate(layers):
            assert ranks[l.name][(i + s) % 2] == 1 + (s + i) % 4
    assert plans[0] != plans[1]
    assert all(at.session_state["_lrviz_ctx"].loaded.module is model for at in sessions)
    assert tensor_hash(model) == before


# ==================================================================================================
# (b) two processes, one sensitivity cache key
# ==================================================================================================


def _tiny():
    from helpers import tiny_net

    torch.manual_seed(0)
    return tiny_net(10).eval()


def _measure_child(cache_dir: str, barrier, queue, tag: str) -> None:
    """Spawned process: measure the tiny model's sensitivities into ``cache_dir`` (after ``barrier``)."""
    try:
        os.environ["LRVIZ_CACHE_DIR"] = cache_dir
        torch.set_num_threads(1)
        model, ds = _tiny(), get_dataset(TINY_DATA)
        if barrier is not None:
            barrier.wait(timeout=120)
        s = measure_sensitivity(model, ds, limit=TINY_N, device="cpu")
        queue.put((tag, s.key, s.cached_layers, len(s.layers), s.complete, len(s.anchors), None))
    except Exception as exc:  # pragma: no cover - reported by the parent
        queue.put((tag, None, None, None, None, None, repr(exc)))


def _run_children(cache_dir: Path, tags, together: bool) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(tags)) if together else None
    procs = [ctx.Process(target=_measure_child, args=(str(cache_dir), barrier, queue, t)) for t in tags]
    for p in procs:
        p.start()
    out = {}
    for _ in tags:
        tag, *rest = queue.get(timeout=300)
        out[tag] = rest
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r[-1] is None for r in out.values()), out
    return out


def _cached(cache_dir: Path):
    """What the cache under ``cache_dir`` (a ``LRVIZ_CACHE_DIR``) holds for the tiny model."""
    return load_sensitivity(_tiny(), get_dataset(TINY_DATA), limit=TINY_N, device="cpu", cache_root=cache_dir / "sensitivity")


def test_two_processes_measuring_one_key_agree_with_one_process(tmp_path):
    single, shared = tmp_path / "single", tmp_path / "shared"
    ref_run = _run_children(single, ["alone"], together=False)["alone"]
    runs = _run_children(shared, ["a", "b"], together=True)
    key, _, total, _, _, _ = ref_run
    assert all(r[0] == key and r[2] == total and r[3] and r[4] == 3 for r in runs.values())  # complete, anchors
    measured = sum(total - r[1] for r in runs.values())
    assert measured == total, runs  # the locks: every layer measured by exactly one of the two

    # every cache file loads, and nothing temporary is left behind
    folder = shared / "sensitivity" / key
    files = sorted(folder.glob("layer-*.npz"))
    assert len(files) == total and (folder / "anchors.json").is_file()
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    for p in files:
        with np.load(p, allow_pickle=False) as z:
            assert all(z[k].size for k in z.files)

    ref, got = _cached(single), _cached(shared)
    assert ref.key == got.key == key and got.cached_layers == total and got.complete
    assert list(got.curves) == list(ref.curves)
    for k, c in ref.curves.items():
        g = got.curves[k]
        assert np.array_equal(g.ranks, c.ranks) and np.array_equal(g.top1, c.top1) and np.array_equal(g.loss, c.loss)
        assert np.array_equal(g.delta, c.delta), k
    assert [(a["fraction"], a["ranks"], a["top1"], a["loss"]) for a in got.anchors] == \
           [(a["fraction"], a["ranks"], a["top1"], a["loss"]) for a in ref.anchors]


@pytest.fixture
def tiny_setup(tmp_path):
    torch.manual_seed(0)
    return _tiny(), get_dataset(TINY_DATA), tmp_path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_torn_cache_file_is_measured_again(tiny_setup, damage):
    model, ds, root = tiny_setup
    kw = dict(limit=TINY_N, cache_root=root, device="cpu")
    s1 = measure_sensitivity(model, ds, **kw)
    folder = root / s1.key
    victim = _layer_file(folder, s1.layers[1])
    data = victim.read_bytes()
    victim.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    (folder / "anchors.json").write_text('{"not": "a list"')
    s2 = measure_sensitivity(model, ds, **kw)
    assert s2.complete and s2.cached_layers == len(s1.layers) - 1
    assert victim.read_bytes() != b"" and _load_layer(victim, _info(model, s1.layers[1]), s1.base_logits.shape) is not None
    for k, c in s1.curves.items():
        assert np.allclose(s2.curves[k].delta, c.delta, atol=2e-3 * max(1.0, np.abs(c.delta).max()))
        assert np.array_equal(s2.curves[k].top1, c.top1)
    assert [a["top1"] for a in s2.anchors] == [a["top1"] for a in s1.anchors]
    s3 = measure_sensitivity(model, ds, **kw)
    assert s3.cached_layers == len(s1.layers) and s3.seconds == 0


def _info(model, name):
    from lrviz.layers import find_layers

    return {l.name: l for l in find_layers(model)[0]}[name]


def test_a_layer_locked_by_another_process_is_taken_up_last(tiny_setup):
    model, ds, root = tiny_setup
    kw = dict(limit=TINY_N, cache_root=root, device="cpu", anchors=())
    probe = load_sensitivity(model, ds, **kw)  # the key (nothing cached yet)
    folder = root / probe.key
    first = probe.layers[0]
    (folder / LOCK_DIR).mkdir(parents=True)
    held = FileLock(folder / LOCK_DIR / f"{_layer_file(folder, first).name}.lock")
    assert held.acquire(blocking=False)
    order, result = [], {}

    def run():
        result["s"] = measure_sensitivity(model, ds, progress=lambda d, t, name: order.append(name), **kw)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while len(order) < len(probe.layers) - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert order == list(probe.layers[1:])  # all the others done, the locked one waits
    assert t.is_alive()
    held.release()
    t.join(timeout=120)
    s = result["s"]
    assert order[-1] == first and s.complete and list(s.curves)[0][0] == first  # curves still in layer order


def test_waiting_for_a_locked_layer_can_be_stopped(tiny_setup):
    model, ds, root = tiny_setup
    kw = dict(limit=TINY_N, cache_root=root, device="cpu", anchors=())
    probe = load_sensitivity(model, ds, **kw)
    folder = root / probe.key
    (folder / LOCK_DIR).mkdir(parents=True)
    others_done = {}

    def progress(done, total, name):
        if done == total - 1:
            others_done["at"] = time.monotonic()

    def stop():  # polled before every forward pass and while waiting for a lock
        return "at" in others_done and time.monotonic() - others_done["at"] > 0.5

    with FileLock(folder / LOCK_DIR / f"{_layer_file(folder, probe.layers[0]).name}.lock"):
        s = measure_sensitivity(model, ds, should_stop=stop, progress=progress, **kw)
        assert time.monotonic() - others_done["at"] < 30
    assert not s.complete and probe.layers[0] not in {n for n, _ in s.curves}
    assert {n for n, _ in s.curves} == set(probe.layers[1:])
