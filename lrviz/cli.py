"""The ``lrviz`` command line: one ``cmd_*`` function per command, and :func:`main`.

Exit codes: 0 ok, 2 bad input (one line ``lrviz: error: ...`` on stderr, no traceback), 1 unexpected
failure. Progress goes to stderr as log lines; results go to stdout and, with ``--json``, to a file.

Bad input is caught before any work where it can be: values by the argument types
(:mod:`lrviz.cli_args`: a bad number, plan spec or target never gets to load a model), output paths
before loading (:mod:`lrviz.outputs`: an existing file as ``--out``, an unwritable folder), weights,
data and plans before the long steps. Outputs are written atomically — into a temporary file or folder
next to the target, then renamed — so a failure leaves nothing half-written and an existing file as it
was. ``compress --out DIR`` refuses a folder that is not empty unless ``--force`` is given, which
replaces only lrviz's own files in it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time

from .cli_args import (
    DECOMP_HELP,
    add_factor_args,
    method_rule_type,
    Parser,
    UsageError,
    add_calibration_args,
    add_data_args,
    add_device_args,
    add_model_args,
    add_speed_args,
    batches_type,
    count_or_zero,
    device_type,
    input_size_type,
    nonneg_float,
    plan_type,
    positive_float,
    positive_int,
    strategies_type,
    target_type,
    targets_type,
)
from .errors import LrvizError
from .fmt import human
from .cli_store import add_runs, record
from .outputs import check_dir_target, check_file_target, write_dir, write_file

log = logging.getLogger("lrviz.cli")

#: The files ``lrviz compress`` writes into ``--out`` (with ``state_dict.pt`` the folder is an export directory: a MODEL).
COMPRESS_FILES = ("plan.json", "model.pt2", "metrics.json", "state_dict.pt")


def _progress(prefix: str, every: int = 1):
    last = [0.0]

    def cb(done, total, name=""):
        now = time.monotonic()
        if done == total or done % every == 0 or now - last[0] > 2:
            last[0] = now
            print(f"[{prefix}] {done}/{total} {name}".rstrip(), file=sys.stderr, flush=True)

    return cb


_INT_LIST = re.compile(r"\[(\s*-?\d+(?:,\s*-?\d+)*\s*)\]")


def _json_text(doc) -> str:
    """``json.dumps(doc, indent=1)`` with lists of integers on one line (index lists stay readable)."""
    return _INT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", json.dumps(doc, indent=1))


def _write_json(path, doc) -> None:
    write_file(path, _json_text(doc).encode())
    print(f"wrote {path}", file=sys.stderr)


# --- shared steps ------------------------------------------------------------------------------

def _load(args):
    from .models import load_model

    return load_model(args.model, weights=args.weights, input_size=args.input_size, num_classes=args.num_classes)


def _dataset(args, loaded, split="test", augment=False, name=None):
    from .data import get_dataset

    name = name or args.data
    resize = tuple(args.resize) if args.resize else None
    if resize is None and name.partition(":")[0].lower() == "imagenet":
        resize = tuple(loaded.input_size)[1:]  # the preset scaled to the model (resize 256/224 of it, then crop): one scan
    kw = dict(root=args.data_root, grayscale=args.grayscale, mean=args.mean, std=args.std, augment=augment)
    ds = get_dataset(name, split, resize=resize, **kw)
    want = tuple(loaded.input_size)
    got = tuple(getattr(ds, "input_size", want))
    resized_from = None
    if resize is None and got[1:] != want[1:]:
        resized_from = got[1:]
        ds = get_dataset(name, split, resize=want[1:], **kw)
        got = tuple(getattr(ds, "input_size", want))
    if got[0] != want[0]:
        fix = "--grayscale" if want[0] == 1 else f"a dataset with {want[0]} channels"
        raise LrvizError(f"dataset {name} has {got[0]} channel(s) but model {loaded.name} expects {want[0]}; use {fix} "
                         "or another --input-size")
    if getattr(ds, "num_classes", loaded.num_classes) > loaded.num_classes:
        raise LrvizError(f"dataset {name} has {ds.num_classes} classes but the model outputs {loaded.num_classes}; pass --num-classes")
    if resized_from is not None and not augment:
        print(f"resizing {name} images {resized_from} to the model's {want[1:]}", file=sys.stderr)
    return ds


def _training_data(args, loaded, name=None):
    """``(plain, augmented)`` views of the training images (the ``train`` split of ``name``)."""
    return _dataset(args, loaded, split="train", name=name), _dataset(args, loaded, split="train", augment=True, name=name)


def _factors(args, loaded):
    """The :class:`lrviz.FactorCache` of the command: weight-only, or with ``--factors data`` built from the
    input statistics of ``--factors-images`` images of the *training* split of ``--data`` (the bundled test
    sample's: the bundled train sample), so no evaluated image shapes the factors. Made once per command."""
    from .decompose import FactorCache

    made = getattr(args, "_factor_cache", None)
    if made is not None:
        return made
    if getattr(args, "factors", "weights") != "data":
        made = FactorCache(loaded.module)
    else:
        from .activations import input_statistics
        from .data import train_data_name

        if not getattr(args, "data", None):
            raise LrvizError("--factors data needs --data: the statistics come from its training split")
        name = train_data_name(args.data)
        train = _dataset(args, loaded, split="train", name=name)
        n = min(args.factors_images, len(train))
        t0 = time.monotonic()
        stats = input_statistics(loaded.module, train, limit=n, data_name=f"{name} train, {n} images")
        print(f"[factors] data-aware: input statistics of {len(stats.second_moment)} layers on {n} {name} train images "
              f"({time.monotonic() - t0:.1f}s)", file=sys.stderr, flush=True)
        made = FactorCache(loaded.module, stats)
    args._factor_cache = made
    return made


def _label(args) -> str:
    """The plan as the user gave it: ``--plan`` and its ``--decomp`` rules."""
    rules = getattr(args, "decomp", None) or ()
    return str(args.plan) + "".join(f" +{p}={m}" + (f":{r}" if r else "") for p, m, r in rules)


def _plan_kwargs(args) -> dict:
    return {"exclude": args.exclude or (), "keep_classifier": not getattr(args, "decompose_classifier", False)}


def _plan_for(args, loaded, analysis):
    from .plan import make_plan

    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: it has no modules to decompose (evaluate and cost only)")
    return _snapped(args, analysis, make_plan(analysis, args.plan, **_plan_kwargs(args)))


def _snapped(args, analysis, plan):
    """The plan with ranks at multiples of ``--snap`` (a ``ratio:T`` plan keeps its params budget), then
    the ``--decomp`` rules applied (CP / spatial SVD per layer)."""
    snap = getattr(args, "snap", None)
    if snap:
        from .plan import parse_spec, snap_plan

        kind, value = parse_spec(args.plan)
        plan = snap_plan(analysis, plan, snap, *(("params", value) if kind == "ratio" else (None, None)))
    rules = getattr(args, "decomp", None)
    if rules:
        from .plan import apply_methods

        plan = apply_methods(plan, rules)
    return plan


def _analysis_and_plan(args, loaded, progress=None):
    """The analysis and the resolved plan, with every check that needs no spectra done first (plan
    files, ``ratio:T`` out of reach) so that bad plans fail before the spectra are computed; specs
    that need no spectra (``full``, ``uniform:F``, a plan file) skip them."""
    from .analysis import analyze
    from .plan import precheck_plan

    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: it has no modules to decompose (evaluate and cost only)")
    quick = analyze(loaded.module, loaded.input_size, loaded.name, spectra=False)
    plan = precheck_plan(quick, args.plan, **_plan_kwargs(args))
    if plan is not None:
        return quick, _snapped(args, quick, plan)
    a = analyze(loaded.module, loaded.input_size, loaded.name, progress=progress)
    return a, _plan_for(args, loaded, a)


# --- commands ---------------------------------------------------------------------------------

def cmd_analyze(args) -> int:
    from .analysis import analyze

    loaded = _load(args)
    if not loaded.decomposable:
        return _analyze_program(args, loaded)
    a = analyze(loaded.module, loaded.input_size, loaded.name, progress=_progress("analyze", every=10))
    doc = a.to_dict()
    print(f"model {loaded.name} ({loaded.source}); input {'x'.join(map(str, loaded.input_size))}; units: MACs (FLOPs = 2 x MACs)")
    hdr = f"{'layer':34s} {'kind':10s} {'weight':>16s} {'in->out':>13s} {'vbmf ranks':>11s} {'sigma2':>20s} {'params':>9s} {'MACs':>9s}"
    print(hdr)
    for l in doc["layers"]:
        hw = f"{'x'.join(map(str, l['in_hw'])) or '-'}->{'x'.join(map(str, l['out_hw'])) or '-'}"
        s2 = ",".join(f"{v:.2e}" for v in l["vbmf_sigma2"])
        print(f"{l['name'][:34]:34s} {l['kind']:10s} {'x'.join(map(str, l['weight_shape'])):>16s} {hw:>13s} "
              f"{','.join(map(str, l['vbmf_ranks'])):>11s} {s2:>20s} {human(l['params']):>9s} {human(l['macs']):>9s}")
    for s in doc["skipped"]:
        print(f"skipped {s['name']}: {s['reason']}")
    t = doc["totals"]
    print(f"total: {t['params']:,} params, {t['macs']:,} MACs ({human(t['flops'])} FLOPs); "
          f"{len(doc['layers'])} decomposable layers, {len(doc['skipped'])} skipped")
    if args.json:
        _write_json(args.json, doc)
    return 0


def _analyze_program(args, loaded) -> int:
    from .analysis import analyze_program

    a = analyze_program(loaded.program, loaded.input_size, loaded.name)
    print(f"model {loaded.name} (exported program, cost only): {a.params:,} params, {a.macs:,} MACs ({human(2 * a.macs)} FLOPs)")
    if args.json:
        _write_json(args.json, a.to_dict())
    return 0


def cmd_evaluate(args) -> int:
    from .decompose import compress
    from .evaluate import evaluate
    from .store import eval_metrics

    loaded = _load(args)
    model = loaded.runnable
    ds = _dataset(args, loaded)
    plan = cost = None
    if args.plan:
        from .plan import plan_cost

        a, plan = _analysis_and_plan(args, loaded)
        cost = plan_cost(a, plan)
        model = compress(loaded.module, plan, _factors(args, loaded), progress=_progress("decompose", every=10))
    dev = _device(args.device, say=True)
    res = evaluate(model, ds, limit=args.limit, batch_size=args.batch_size, device=dev, amp=args.amp, progress=_progress("evaluate", every=10))
    lo, hi = res.top1_ci
    top5 = f", top-5 {res.top5:.2%}" if res.top5 is not None else ""
    print(f"{loaded.name}{' + plan ' + _label(args) if plan is not None else ''} on {args.data} (n={res.n}): "
          f"top-1 {res.top1:.2%} [95% CI {lo:.2%}, {hi:.2%}]{top5}, loss {res.loss:.4f}")
    if args.json:
        _write_json(args.json, res.to_dict())
    # ``limit``: the subset asked for (lrviz.data.subset, seeded), so the dashboard can reuse the result
    record(args, "evaluation", loaded, plan=plan, name=_label(args) if plan is not None else "original", metrics={**eval_metrics(res, cost), "limit": args.limit})
    return 0


def cmd_compress(args) -> int:
    from .data import finetune_splits
    from .decompose import compress
    from .evaluate import evaluate
    from .export import save_program
    from .plan import plan_cost

    if args.finetune and not args.data:
        raise LrvizError("--finetune needs --data (the training split is used)")
    if args.train_data and not args.finetune:
        raise LrvizError("--train-data is the data to fine-tune on: it needs --finetune EPOCHS")
    out = check_dir_target(args.out, "--out", force=args.force, owned=COMPRESS_FILES)
    loaded = _load(args)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: it has no modules to decompose (evaluate and cost only)")
    test = _dataset(args, loaded) if args.data else None
    splits = None
    if args.finetune:
        # train / validation (best epoch) / evaluation, pairwise disjoint: nothing reported was trained on or selected on
        plain, augmented = _training_data(args, loaded, args.train_data)
        splits = finetune_splits(test, plain, augmented=augmented, train_limit=args.train_limit, val_limit=args.val_limit,
                                 eval_limit=args.limit)
        test = splits.eval.dataset
        print(f"[finetune] {splits.description}", file=sys.stderr, flush=True)
    limit = None if splits is not None else args.limit
    a, plan = _analysis_and_plan(args, loaded, progress=_progress("analyze", every=10))
    if args.structure == "speed":
        from .plan import speed_structure

        args.threads = None
        plan = speed_structure(plan, _table(args, loaded, a, args.speed_batch, "channels_last", "cpu"), a)
    cost = plan_cost(a, plan)
    small = compress(loaded.module, plan, _factors(args, loaded), progress=_progress("decompose", every=10))
    metrics = cost.to_dict()
    if test is not None:
        dev = _device(args.device, say=True)
        ev = dict(batch_size=args.batch_size, device=dev, amp=args.amp)
        acc0 = evaluate(loaded.module, test, limit=limit, progress=_progress("evaluate original", every=10), **ev)
        acc1 = evaluate(small, test, limit=limit, progress=_progress("evaluate compressed", every=10), **ev)
        metrics["accuracy"] = {"original": acc0.to_dict(), "compressed": acc1.to_dict()}
        print(f"top-1 original {acc0.top1:.2%}, compressed {acc1.top1:.2%} (n={acc1.n})")
        if splits is not None:
            from .train import finetune

            def cb(ev):
                if ev["event"] == "epoch":
                    val = f"{ev['val_top1']:.2%}" if ev["val_top1"] is not None else "-"
                    print(f"[finetune] epoch {ev['epoch']}: train loss {ev['train_loss']:.4f}, val top-1 {val}, {ev['seconds']:.0f}s", file=sys.stderr, flush=True)
                elif ev["step"] % 50 == 0:
                    print(f"[finetune] epoch {ev['epoch']} step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f}", file=sys.stderr, flush=True)

            res = finetune(small, splits.train.dataset, epochs=args.finetune, lr=args.lr, val_set=splits.val.dataset, val_limit=None,
                           device=dev, amp=args.amp,
                           teacher=loaded.module if args.distill else None, progress=cb)
            small = res.model
            acc2 = evaluate(small, test, progress=_progress("evaluate fine-tuned", every=10), **ev)
            metrics["accuracy"]["compressed_before_finetune"] = metrics["accuracy"]["compressed"]
            metrics["accuracy"]["compressed"] = acc2.to_dict()
            metrics["finetune"] = {"epochs_run": len(res.history), "best_epoch": res.best_epoch, "lr": args.lr, "distill": bool(args.distill),
                                   "val_top1": res.best_val_top1, "data": splits.record()}
            print(f"after fine-tuning ({len(res.history)} epochs, best {res.best_epoch} on {splits.val.n:,} validation images): "
                  f"top-1 {acc2.top1:.2%} on {acc2.n:,} {'held-out ' if splits.held_out else ''}{splits.eval.what} never used for training or selection")
    from .handoff import architecture_record, is_export_dir

    doc = plan.to_dict()
    files = {"model.pt2": lambda path: save_program(small, loaded.input_size, path),
             "metrics.json": lambda path: path.write_text(_json_text(metrics))}
    if not is_export_dir(args.model):  # the architecture can be built again: the folder is a MODEL (lrviz evaluate DIR)
        import torch

        doc["architecture"] = architecture_record(args.model, loaded.input_size, loaded.num_classes, args.weights)
        doc["format"] = "state_dict"
        files["state_dict.pt"] = lambda path: torch.save(small.state_dict(), path)
    files["plan.json"] = lambda path: path.write_text(_json_text(doc))
    write_dir(out, files)
    print(f"plan {_label(args)}: params {cost.params:,} -> {cost.params_planned:,} ({cost.params_ratio:.2f}x), "
          f"MACs {cost.macs:,} -> {cost.macs_planned:,} ({cost.macs_ratio:.2f}x); FLOPs = 2 x MACs")
    print(f"wrote {out / 'model.pt2'}, {out / 'plan.json'}, {out / 'metrics.json'}"
          + (f", {out / 'state_dict.pt'} (the folder is a MODEL: lrviz evaluate {out})" if "state_dict.pt" in files else ""))
    from .store import cost_metrics

    rm = cost_metrics(cost)
    acc = metrics.get("accuracy", {})
    if "compressed" in acc:
        c = acc["compressed"]
        rm.update(top1=c["top1"], lo=c["top1_ci"][0], hi=c["top1_ci"][1], n=c["n"], original_top1=acc["original"]["top1"])
    if "finetune" in metrics:
        f = metrics["finetune"]
        rm.update(epochs_run=f["epochs_run"], best_epoch=f["best_epoch"], val_top1=f["val_top1"], lr=f["lr"])
    record(args, "finetune" if args.finetune else "export", loaded, plan=plan,
           name=f"compress {_label(args)}" + (f" + fine-tune {args.finetune}" if args.finetune else ""), metrics=rm,
           payload={"metrics": metrics}, artifact=out.resolve())
    return 0


def cmd_train(args) -> int:
    import torch

    from .models import load_model
    from .train import TrainConfig, train_model

    out = check_dir_target(args.out, "--out", force=None)
    loaded = load_model(args.model, weights=args.weights or "none", input_size=args.input_size, num_classes=args.num_classes)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: it cannot be trained")
    cfg = TrainConfig(regime=args.regime, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                      lam_ortho=args.lam_ortho, lam_group=args.lam_group, seed=args.seed, train_limit=args.train_limit)
    args.resize = args.resize if hasattr(args, "resize") else None
    train = _dataset(args, loaded, split="train", augment=True)
    test = _dataset(args, loaded, split="test")
    data_record = None
    from .data import finetune_splits, same_images

    if same_images(train, test):  # one labelled set (an ImageFolder): monitor on images held out of training
        splits = finetune_splits(test, _dataset(args, loaded, split="train"), augmented=train)
        train, test, data_record = splits.train.dataset, splits.val.dataset, splits.record()
        print(f"[train] {splits.description}", file=sys.stderr, flush=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrvizError(f"cannot create --out {args.out}: {e.strerror or e}") from e

    def cb(ev):
        if ev["event"] == "step" and ev["step"] % 100 == 0:
            print(f"[train] epoch {ev['epoch']} step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f} reg {ev['reg']:.4f}", file=sys.stderr, flush=True)
        elif ev["event"] == "epoch":
            print(f"[train] epoch {ev['epoch']}/{cfg.epochs}: loss {ev['train_loss']:.4f}, val top-1 {ev['val_top1']:.2%}, {ev['seconds']:.0f}s", file=sys.stderr, flush=True)

    model, history = train_model(loaded.module, train, cfg, val_set=test, val_limit=args.val_limit, checkpoint=str(out / "checkpoint.pt"),
                                 device=_device(args.device, say=True),
                                 resume=args.resume, progress=cb)
    write_file(out / "model.pt", lambda f: torch.save(model.state_dict(), f), "--out")
    doc = {"command": "lrviz " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("lrviz") else None, "model": args.model,
           "config": cfg.__dict__, "history": history}
    if data_record is not None:
        doc["data"] = data_record
    write_file(out / "history.json", _json_text(doc).encode(), "--out")
    print(f"wrote {out / 'model.pt'} (state_dict, regime {cfg.regime}); final val top-1 {history[-1]['val_top1']:.2%}")
    return 0


# --- sensitivity, projection, solver, sweep ----------------------------------------------------

def _sensitivities(args, loaded, executor=None):
    from .sensitivity import measure_sensitivity

    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: sensitivities need a decomposable model")
    ds = _dataset(args, loaded, split=args.split)
    limit = args.limit if args.limit is not None else 1000
    t0 = time.monotonic()
    device = _device(args.device) if getattr(args, "device", None) else None
    sens = measure_sensitivity(loaded.module, ds, limit=limit, batch_size=args.batch_size, cache=not args.no_cache, device=device,
                               grid_points=args.grid_points, factors=_factors(args, loaded),
                               data_name=f"{args.data} {args.split}, {min(limit, len(ds))} images",
                               progress=_progress("sensitivity", every=4), executor=executor)
    src = "from the cache" if sens.cached_layers == len(sens.layers) else f"measured in {time.monotonic() - t0:.1f}s"
    print(f"sensitivities of {len(sens.layers)} layers on {sens.n} images ({src}; key {sens.key})", file=sys.stderr)
    return sens


def _projector(sens):
    from .project import SensitivityProjector

    return SensitivityProjector.from_sensitivities(sens)


def _open_executor(args):
    """``--ray [ADDRESS]``: a :class:`lrviz.distributed.RayExecutor` (connected before any other work), else None."""
    from .distributed import open_executor

    ex = open_executor(getattr(args, "ray", None), getattr(args, "ray_threads", None))
    if ex is not None:
        print(f"[ray] {ex.workers} worker(s), {ex.threads} thread(s) each{f', {ex.gpus} GPU(s)' if ex.gpus else ''} "
              f"({'a local Ray' if ex.address == 'local' else ex.address})", file=sys.stderr, flush=True)
    return ex


def cmd_sensitivity(args) -> int:
    from .distributed import backend_info

    executor = _open_executor(args)
    try:
        loaded = _load(args)
        sens = _sensitivities(args, loaded, executor)
    finally:
        if executor is not None:
            executor.close()
    backend = backend_info(executor)
    tab = sens.table()
    print(f"{loaded.name} on {sens.data}: original top-1 {sens.base_top1:.2%}, loss {sens.base_loss:.4f}")
    print(f"{'layer':34s} {'mode':5s} {'full':>5s}  top-1 at rank (drop in points)")
    for (layer, mode), g in tab.groupby(["layer", "mode"], sort=False):
        pts = "  ".join(f"{int(r.rank)}:{r.top1:.1%}({100 * r.drop:+.1f})" for r in g.itertuples() if r.rank < r.full)
        print(f"{layer[:34]:34s} {mode:5s} {int(g.full.iloc[0]):5d}  {pts}")
    for a in sens.anchors:
        print(f"anchor: uniform rank fraction {a['fraction']:g} on all layers but the output one -> top-1 {a['top1']:.2%}")
    if args.json:
        _write_json(args.json, {**sens.to_dict(), "backend": backend["backend"], "workers": backend["workers"]})
    record(args, "sensitivity", loaded, name=f"sensitivity {sens.n} images", metrics={
        "n": sens.n, "base_top1": sens.base_top1, "layers": len(sens.layers), "grid_points": args.grid_points, "cache_key": sens.key,
        "backend": backend["backend"], "workers": backend["workers"]})
    return 0


def cmd_project(args) -> int:
    from .analysis import analyze
    from .plan import plan_cost

    loaded = _load(args)
    a = analyze(loaded.module, loaded.input_size, loaded.name) if loaded.decomposable else None
    plan = _plan_for(args, loaded, a)
    cost = plan_cost(a, plan)
    if args.basis == "proxy":
        from .evaluate import evaluate
        from .project import DESCRIPTION, project_accuracy

        base = evaluate(loaded.module, _dataset(args, loaded, split=args.split), limit=args.limit, batch_size=args.batch_size,
                        device=_device(args.device))
        pr = project_accuracy(a, plan, base.top1, loaded.num_classes)
        lo, hi = pr.top1 - 0.5 * pr.drop, min(pr.top1 + pr.drop, base.top1)
        doc = {"projected_top1": pr.top1, "interval": [max(lo, 0.0), hi], "basis": "proxy", "detail": DESCRIPTION,
               "base_top1": base.top1, "n": base.n}
    else:
        sens = _sensitivities(args, loaded)
        pr = _projector(sens).project(plan)
        doc = {**pr.to_dict(), "basis": "sensitivities", "n": sens.n, "calibration_key": sens.key}
    doc.update(params=cost.params_planned, macs=cost.macs_planned, params_ratio=cost.params_ratio, macs_ratio=cost.macs_ratio,
               plan=args.plan)
    lo, hi = doc["interval"]
    print(f"{loaded.name} + {_label(args)}: {cost.params_ratio:.2f}x fewer params ({cost.params_planned:,}), "
          f"{cost.macs_ratio:.2f}x fewer MACs ({cost.macs_planned:,})")
    print(f"projected top-1 {doc['projected_top1']:.2%} [{lo:.2%}, {hi:.2%}] (original {doc['base_top1']:.2%}; basis: {doc['basis']}; "
          "not evaluated, before fine-tuning)")
    if args.json:
        _write_json(args.json, doc)
    return 0


# --- speed ------------------------------------------------------------------------------------

def _device(name: str, say: bool = False) -> str:
    """``--device`` resolved on this machine (:func:`lrviz.devices.resolve_device`: ``auto`` is CUDA when
    there is a GPU); ``say`` prints where the work runs (stderr)."""
    from .devices import device_label, resolve_device

    dev = resolve_device(name)
    if say:
        print(f"[device] {device_label(dev)}", file=sys.stderr, flush=True)
    return str(dev)


def _table(args, loaded, a, batch: int, execution: str, device: str):
    from .latency import measure_latency_table

    tab = measure_latency_table(loaded.module, a, batch=batch, device=device, threads=args.threads, execution=execution,
                                progress=_progress(f"latency table, batch {batch}", every=5))
    print(f"[latency table] {len(tab.layers)} layers at batch {batch} ({tab.cached} geometries from the cache); "
          f"original end to end {tab.total_ms:.2f} ms ({execution})", file=sys.stderr, flush=True)
    return tab


def _print_bench(r, plan_name: str) -> None:
    ex = "+".join(r.applied) or "eager"
    print(f"batch {r.batch}, {r.device}, {r.threads} thread(s), execution {r.execution} ({ex}){' [cached]' if r.cached else ''}:")
    print(f"  original {r.original_ms:.2f} ms (IQR {r.original_iqr_ms:.2f}) -> {plan_name} {r.planned_ms:.2f} ms "
          f"(IQR {r.planned_iqr_ms:.2f}): {r.speedup:.2f}x faster; MACs {r.macs_ratio:.2f}x fewer "
          f"(measured / MAC ratio {r.speedup / r.macs_ratio:.2f})")
    print(f"  original as loaded (eager) {r.original_eager_ms:.2f} ms: {r.speedup_vs_eager:.2f}x faster than that")
    if r.executions:
        print("  executions tried (planned model): " + ", ".join(f"{k} {v:.2f} ms" for k, v in r.executions.items()))
    for n in r.notes:
        print(f"  note: {n}")
    if r.layers:
        print(f"  {'layer':34s} {'original ms':>12s} {'planned ms':>11s} {'speedup':>8s}")
        for row in r.layers:
            sp = row["original_ms"] / max(row["planned_ms"], 1e-9)
            print(f"  {row['name'][:34]:34s} {row['original_ms']:12.3f} {row['planned_ms']:11.3f} {sp:7.2f}x")


def cmd_bench(args) -> int:
    from .decompose import compress
    from .latency import bench

    loaded = _load(args)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: bench needs a decomposable model")
    device = _device(args.device)
    a, plan = _analysis_and_plan(args, loaded, progress=_progress("analyze", every=10))
    if args.structure == "speed":
        from .plan import speed_structure

        tab = _table(args, loaded, a, args.batch[-1], "channels_last", device)
        plan = speed_structure(plan, tab, a)
    small = compress(loaded.module, plan, progress=_progress("decompose", every=10))
    res = bench(loaded.module, small, plan, a, batches=args.batch, device=device, threads=args.threads, execution=args.execution,
                per_layer=not args.no_layers, rounds=args.rounds, cache=not args.no_cache, progress=_progress("bench"))
    print(f"{loaded.name} + plan {_label(args)}{' (fastest structure per layer)' if args.structure == 'speed' else ''}")
    for r in res:
        _print_bench(r, "planned")
    docs = [r.to_dict() for r in res]
    if args.json:
        _write_json(args.json, docs[0] if len(docs) == 1 else docs)
    from .plan import plan_cost

    bm = {"params_ratio": plan_cost(a, plan).params_ratio, "macs_ratio": res[0].macs_ratio, "device": res[0].device,
          "threads": res[0].threads}
    for r in res:
        bm.update({f"speedup_b{r.batch}": r.speedup, f"original_ms_b{r.batch}": r.original_ms, f"planned_ms_b{r.batch}": r.planned_ms,
                   f"execution_b{r.batch}": r.execution})
    record(args, "bench", loaded, plan=plan, name=f"bench {_label(args)}", metrics=bm, payload=docs, data="-")
    return 0


def _next_aim(tried, ratio: float) -> float:
    """Secant step on log(measured speedup) vs log(aim) through the two measurements closest to the target
    (one measurement: assume measured ∝ aim)."""
    import math

    pts = sorted(tried, key=lambda t: abs(math.log(t[1] / ratio)))[:2]
    a0, m0 = pts[0][0], pts[0][1]
    if len(pts) == 2 and pts[1][0] != a0 and pts[1][1] > 0 and m0 > 0:
        k = (math.log(pts[1][1]) - math.log(m0)) / (math.log(pts[1][0]) - math.log(a0))
        if k > 0.05:
            return max(1.0, math.exp(math.log(a0) + (math.log(ratio) - math.log(m0)) / k))
    return max(1.0, a0 * ratio / max(m0, 1e-6))


def _solve_latency(args, loaded, a, proj, ratio: float, rounds: int = 5):
    """The latency solver. The latency table decides *where* to cut (the greedy allocation at a table
    speedup ``aim``); end-to-end measurements decide *how far*: each round solves at ``aim``, builds the
    plan and times it next to the original under the chosen execution, then moves ``aim`` by a secant
    step on log(measured) vs log(aim) towards the target (the first step assumes measured ∝ aim). An aim
    beyond the table's reach is halved back towards the last reachable one. Of the plans measured, the
    one with the least projected loss among those meeting the target wins, else the fastest."""
    import math

    from .budget import solve
    from .decompose import compress
    from .latency import bench, choose_execution

    device = _device(args.device)
    if args.execution == "auto":
        execution, times, _ = choose_execution(loaded.module, loaded.input_size, batch=args.batch, device=device)
        print("[solve] executions of the original: " + ", ".join(f"{k} {v:.2f} ms" for k, v in times.items())
              + f" -> {execution}", file=sys.stderr, flush=True)
    else:
        execution = args.execution
    tab = _table(args, loaded, a, args.batch, execution, device)
    aim, reachable, tried = ratio, 1.0, []  # tried: (aim, measured speedup, SolveResult, BenchResult)
    for round_ in range(1, rounds + 1):
        try:
            res = solve(a, proj, ("latency", aim), snap=args.snap, exclude=args.exclude or (), latency=tab)
        except LrvizError as e:
            if not tried and aim <= ratio:
                raise LrvizError(f"target latency:{ratio:g} at batch {args.batch}: {e}; ask for less, or try another "
                                 "--execution or --batch") from e
            print(f"[solve] round {round_}: {aim:.2f}x is beyond the latency table's reach", file=sys.stderr, flush=True)
            aim = 0.5 * (aim + reachable)
            continue
        reachable = max(reachable, aim)
        small = compress(loaded.module, res.plan)
        b = bench(loaded.module, small, res.plan, a, batches=[args.batch], device=device, threads=args.threads,
                  execution=execution, per_layer=False, cache=False)[0]
        tried.append((aim, b.speedup, res, b))
        acc = f", projected top-1 {res.projected_top1:.2%}" if proj is not None else ""
        print(f"[solve] round {round_}: table speedup {res.ratio:.2f}x, measured {b.speedup:.2f}x "
              f"({res.macs_ratio:.2f}x fewer MACs{acc})", file=sys.stderr, flush=True)
        lo = max((t[0] for t in tried if t[1] < ratio), default=None)  # the largest aim that missed
        hi = min((t[0] for t in tried if t[1] >= ratio), default=None)  # the smallest aim that met the target
        if lo is not None and hi is not None and lo < hi <= 1.1 * lo:
            break  # bracketed within 10 %: the meeting plan is about the least aggressive one
        aim = _next_aim(tried, ratio)
        if lo is not None and hi is not None and lo < hi and not (lo < aim < hi):
            aim = math.sqrt(lo * hi)  # the secant left the bracket: bisect it
        aim = max(aim, 1.0)
    meets = [t for t in tried if t[1] >= ratio]
    if meets:
        best = min(meets, key=lambda t: t[2].projected_loss)
    else:
        best = max(tried, key=lambda t: t[1])
    return best[2], best[3]


def cmd_solve(args) -> int:
    from .analysis import analyze
    from .budget import solve, strategy_plan
    from .plan import max_ratio

    metric, ratio = args.target
    if args.out:
        check_file_target(args.out, "--out")
    if args.method in ("knapsack", "bayes") and (metric == "latency" or not args.data):
        raise LrvizError(f"--method {args.method} allocates params or macs targets from sensitivities: give --data and a "
                         "params: or macs: target")
    if args.method == "continuous" and metric == "latency":
        raise LrvizError("--method continuous allocates params or macs targets; use the greedy method for latency")
    loaded = _load(args)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: nothing to decompose")
    a = analyze(loaded.module, loaded.input_size, loaded.name)
    if metric != "latency":
        most = max_ratio(a, metric, args.exclude or ())
        if ratio > most:
            raise LrvizError(f"target {metric}:{ratio:g} cannot be met: the most {loaded.name} allows is about {most:.2f}x fewer "
                             f"{metric} (every decomposable layer at rank 1, the classifier dense{', --exclude kept' if args.exclude else ''}); "
                             "ask for less")
    proj = _projector(_sensitivities(args, loaded)) if args.data else None
    basis = "sensitivities" if proj is not None else "spectra (no --data: the energy kept, not accuracy)"
    measured = None
    if metric == "latency":
        res, measured = _solve_latency(args, loaded, a, proj, ratio)
    elif args.method == "knapsack":
        from .allocate import knapsack_solve

        res = knapsack_solve(a, proj, (metric, ratio), snap=args.snap, exclude=args.exclude or ())
        basis = "sensitivities, exact knapsack of the additive model"
    elif args.method == "bayes":
        from .allocate import bayes_solve

        res = bayes_solve(a, proj, (metric, ratio), snap=args.snap, exclude=args.exclude or ())
        basis = f"sensitivities, Bayesian optimisation (optuna TPE, {res.steps} trials, seed 0)"
    elif args.method == "continuous":
        from .allocate import continuous_solve

        res = continuous_solve(a, proj, (metric, ratio), snap=args.snap, exclude=args.exclude or ())
        basis = "spectra, continuous rank search (data-free)"
    else:
        res = solve(a, proj, (metric, ratio), snap=args.snap, exclude=args.exclude or ())
    head = f"solved {metric}:{ratio:g}: {res.params_ratio:.2f}x fewer params, {res.macs_ratio:.2f}x fewer MACs"
    if proj is not None:
        pr = proj.project(res.plan)
        head += f"; projected top-1 {pr.top1:.2%} [{pr.interval[0]:.2%}, {pr.interval[1]:.2%}] (original {pr.base_top1:.2%})"
    print(f"{head}; allocation by {basis}")
    if measured is not None:
        m = measured
        verdict = "meets" if m.speedup >= ratio else "MISSES"
        print(f"measured at batch {m.batch} on {m.device} ({m.threads} threads, {m.execution}): {m.original_ms:.2f} -> "
              f"{m.planned_ms:.2f} ms = {m.speedup:.2f}x faster ({verdict} the {ratio:g}x target); "
              f"{m.speedup_vs_eager:.2f}x faster than the original as loaded (eager, {m.original_eager_ms:.2f} ms); "
              f"measured / MAC ratio {m.speedup / m.macs_ratio:.2f}")
    for lp in res.plan.layers:
        print(f"  {lp.name[:34]:34s} {','.join(map(str, lp.ranks)):>9s} / {','.join(map(str, lp.full_ranks))}")
    if proj is not None and metric != "latency":
        for family in ("uniform", "vbmf"):
            other = strategy_plan(a, family, metric, ratio)
            if other is not None:
                po = proj.project(other)
                print(f"  same budget, {family}: projected top-1 {po.top1:.2%} ({other.spec})")
    if args.out:
        write_file(args.out, res.plan.to_json().encode(), "--out")
        print(f"wrote {args.out}", file=sys.stderr)
    sm = {"target": f"{metric}:{ratio:g}", "params_ratio": res.params_ratio, "macs_ratio": res.macs_ratio, "basis": basis,
          "method": args.method}
    if proj is not None:
        sm.update(projected_top1=pr.top1, projected_lo=pr.interval[0], projected_hi=pr.interval[1], calibration_n=proj.sens.n)
    if measured is not None:
        sm.update(speedup=measured.speedup, batch=measured.batch, execution=measured.execution)
    record(args, "solve", loaded, plan=res.plan, name=f"solve {metric}:{ratio:g}", metrics=sm)
    return 0


def cmd_sweep(args) -> int:
    from .analysis import analyze
    from .budget import sweep

    from .distributed import backend_info

    targets = args.targets
    strategies = args.strategies
    executor = _open_executor(args)
    try:
        loaded = _load(args)
        if not loaded.decomposable:
            raise LrvizError(f"{args.model} is an exported program: nothing to decompose")
        a = analyze(loaded.module, loaded.input_size, loaded.name)
        from .budget import NEEDS_SENSITIVITIES

        needs = any(s in strategies for s in NEEDS_SENSITIVITIES)
        proj = _projector(_sensitivities(args, loaded, executor)) if needs or not args.no_projection else None
        ds = _dataset(args, loaded, split=args.split)
        train = _dataset(args, loaded, split="train", augment=True) if args.finetune_epochs else None
        from .data import finetune_splits, same_images

        if train is not None and same_images(train, ds):  # one labelled set: fine-tune on a part the sweep never measures
            splits = finetune_splits(ds, _dataset(args, loaded, split="train"), augmented=train)
            ds, train = splits.eval.dataset, splits.train.dataset
            print(f"[sweep] {splits.description}", file=sys.stderr, flush=True)
        df = sweep(a, loaded.module, ds, targets, metric=args.metric, strategies=strategies, projector=proj,
                   limit=args.limit if args.limit is not None else 1000, snap=args.snap, finetune_epochs=args.finetune_epochs,
                   train_set=train, finetune_limit=args.train_limit, progress=_progress("sweep"), executor=executor,
                   device=_device(args.device), factors=_factors(args, loaded))
    finally:
        if executor is not None:
            executor.close()
    backend = backend_info(executor)
    cols = ["strategy", "target", "params_ratio", "macs_ratio", "projected", "top1"] + (["finetuned"] if args.finetune_epochs else [])
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.json:
        _write_json(args.json, {"schema": "lrviz.sweep/1", "model": loaded.name, "data": args.data, "metric": args.metric,
                                "backend": backend["backend"], "workers": backend["workers"],
                                "rows": json.loads(df.to_json(orient="records"))})
    record(args, "sweep", loaded, name=f"sweep {args.metric} {','.join(f'{t:g}' for t in targets)}",
           metrics={"metric": args.metric, "targets": list(targets), "strategies": list(strategies), "images": int(df["n"].max())
                    if "n" in df and df["n"].notna().any() else None, "finetune_epochs": args.finetune_epochs,
                    "backend": backend["backend"], "workers": backend["workers"]},
           payload=json.loads(df.to_json(orient="records")))
    return 0


# --- hand-off ---------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from .decompose import compress
    from pathlib import Path

    from .handoff import architecture_record, check_parity, export_files, export_onnx, export_pt2, is_export_dir, load_export_dir, parity_batch

    files = export_files(args.format)
    out = check_dir_target(args.out, "--out", force=args.force, owned=files)
    loaded = _load(args)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: nothing to decompose or export again")
    data = _dataset(args, loaded) if args.data else None
    a, plan = _analysis_and_plan(args, loaded, progress=_progress("analyze", every=10))
    small = compress(loaded.module, plan, _factors(args, loaded), progress=_progress("decompose", every=10)).eval()
    x = parity_batch(loaded.input_size, data)
    doc = plan.to_dict()
    doc["architecture"] = architecture_record(args.model, loaded.input_size, loaded.num_classes, args.weights)
    if is_export_dir(args.model):  # a compressed (e.g. fine-tuned) model exported again: the plan of its own folder
        if not all(lp.is_dense for lp in plan.layers):
            if args.format == "state_dict":
                raise LrvizError(f"{args.model} is already compressed: a further plan cannot be written as one state_dict plan; "
                                 "export it with --plan full, or as pt2 / onnx")
            doc.pop("architecture")
        else:
            src = json.loads((Path(args.model) / "plan.json").read_text())
            doc = {k: v for k, v in src.items() if k not in ("parity", "format")}
    doc["format"] = args.format

    def write_model(path):
        import torch

        if args.format == "onnx":
            doc["parity"] = export_onnx(small, loaded.input_size, path, x)
        elif args.format == "pt2":
            doc["parity"] = export_pt2(small, loaded.input_size, path, x)
        else:
            torch.save(small.state_dict(), path)

    def write_plan(path):
        path.write_text(_json_text(doc))

    if args.format == "state_dict":
        # the parity of a state_dict export is the round trip itself: rebuild it from the files, compare
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as tmp:
            write_model(Path(tmp) / "state_dict.pt")
            write_plan(Path(tmp) / "plan.json")
            rebuilt, _, _ = load_export_dir(tmp)
            with torch.no_grad():
                doc["parity"] = check_parity(small(x), rebuilt(x), "state_dict round trip")
    write_dir(out, {files[1]: write_model, "plan.json": write_plan})
    par = doc["parity"]
    extra = f", opset {par['opset']}, {par['runtime']}" if "opset" in par else ""
    print(f"exported {loaded.name} + plan {_label(args)} as {args.format}: max |difference| against PyTorch "
          f"{par['max_abs_diff']:.3g} on a batch of {par['batch']} (output scale {par['output_scale']:.3g}; limit "
          f"{par['rtol']:g} x scale){extra}")
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    from .plan import plan_cost
    from .store import cost_metrics

    record(args, "export", loaded, plan=plan, name=f"export {args.format}", artifact=out.resolve(),
           metrics={"format": args.format, "max_abs_diff": par["max_abs_diff"], "output_scale": par["output_scale"],
                    **cost_metrics(plan_cost(a, plan))})
    return 0


def cmd_report(args) -> int:
    import shlex

    from .analysis import analyze
    from .decompose import compress
    from .plan import plan_cost
    from .report import compression_report
    from .store import eval_metrics

    check_file_target(args.out, "--out")
    loaded = _load(args)
    if not loaded.decomposable:
        raise LrvizError(f"{args.model} is an exported program: a report needs a decomposable model")
    device = _device(args.device)
    ds = _dataset(args, loaded) if args.data else None
    a = analyze(loaded.module, loaded.input_size, loaded.name, progress=_progress("analyze", every=10))
    plan = _plan_for(args, loaded, a)
    cost = plan_cost(a, plan)
    small = compress(loaded.module, plan, _factors(args, loaded), progress=_progress("decompose", every=10))
    r0 = r1 = projection = speed = None
    what = None
    if ds is not None:
        from .evaluate import evaluate

        ev = dict(limit=args.limit, batch_size=args.batch_size, device=device)
        r0 = evaluate(loaded.module, ds, progress=_progress("evaluate original", every=10), **ev)
        r1 = evaluate(small, ds, progress=_progress("evaluate compressed", every=10), **ev)
        what = f"{args.data} test images" + (" (a fixed subset)" if args.limit and args.limit < len(ds) else "")
        print(f"top-1 original {r0.top1:.2%}, compressed {r1.top1:.2%} (n={r1.n}, {what})")
        record(args, "evaluation", loaded, name="original", metrics={**eval_metrics(r0), "limit": args.limit})
        record(args, "evaluation", loaded, plan=plan, name=_label(args), metrics={**eval_metrics(r1, cost), "limit": args.limit})
        projection = _cached_projection(args, loaded, ds, plan)
    if not args.no_latency:
        from .latency import bench

        speed = bench(loaded.module, small, plan, a, batches=args.batch, device=device, threads=args.threads, execution=args.execution,
                      per_layer=False, rounds=args.rounds, progress=_progress("bench"))
        for r in speed:
            print(f"latency batch {r.batch}: {r.original_ms:.2f} -> {r.planned_ms:.2f} ms ({r.speedup:.2f}x, {r.execution})")
    command = "lrviz " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    html = compression_report(loaded, a, plan, cost, r0=r0, r1=r1, accuracy_what=what, projection=projection, speed=speed,
                              data_label=args.data or "", command=command, device=device)
    write_file(args.out, html.encode("utf-8"))
    print(f"plan {_label(args)}: {cost.params_ratio:.2f}x fewer params, {cost.macs_ratio:.2f}x fewer MACs; wrote {args.out} "
          f"({len(html) / 1e6:.1f} MB, self-contained)")
    return 0


def _cached_projection(args, loaded, ds, plan):
    """The plan's sensitivity projection when complete sensitivities for these images are in the cache (else None:
    the report then says "not projected yet"; ``lrviz sensitivity`` measures them)."""
    from .project import SensitivityProjector
    from .sensitivity import load_sensitivity

    sens = load_sensitivity(loaded.module, ds, limit=args.limit if args.limit is not None else 1000, batch_size=args.batch_size)
    if not sens.complete:
        print("no cached layer sensitivities for these images: the report says 'not projected yet' (lrviz sensitivity measures them)",
              file=sys.stderr)
        return None
    proj = SensitivityProjector.from_sensitivities(sens)
    return None if proj.missing(plan) else proj.project(plan)


def cmd_models(args) -> int:
    from .models import available_models, builtin_models

    av = available_models()
    print("builtin:")
    for name, entry in builtin_models().items():
        print(f"  {name:18s} {getattr(entry, 'description', '')}")
    print("torchvision classification models:")
    print("  " + ", ".join(av["torchvision"]))
    print("also: package.module:factory (with --weights FILE), or FILE.pt2 (evaluate/cost only)")
    return 0


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export the planned model as pt2, ONNX or a state_dict (+ plan.json), checked for parity")
    add_model_args(x)
    x.add_argument("--plan", required=True, type=plan_type, metavar="SPEC", help=_PLAN_HELP)
    x.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense")
    x.add_argument("--decompose-classifier", action="store_true", help="also decompose the output Linear")
    x.add_argument("--snap", type=positive_int, metavar="K", help="ranks rounded to multiples of K")
    x.add_argument("--decomp", action="append", type=method_rule_type, metavar="PATTERN=METHOD[:RANK]", help=DECOMP_HELP)
    add_factor_args(x)
    x.add_argument("--format", required=True, choices=["pt2", "onnx", "state_dict"],
                   help="pt2: torch.export program; onnx: ONNX with a dynamic batch (checked with onnxruntime); state_dict: "
                        "plan.json + state_dict.pt, loadable again as MODEL (lrviz evaluate DIR)")
    x.add_argument("--out", required=True, metavar="DIR", help="new or empty folder")
    x.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing lrviz's files there")
    add_data_args(x, required=False)
    x.set_defaults(func=cmd_export, structure="size")


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="a self-contained offline HTML report of a plan: spectra with VBMF cuts, per-layer ranks, "
                                      "params / MACs / latency / accuracy before and after, environment, the command")
    add_model_args(r)
    r.add_argument("--plan", required=True, type=plan_type, metavar="SPEC", help=_PLAN_HELP)
    r.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense")
    r.add_argument("--decompose-classifier", action="store_true", help="also decompose the output Linear")
    add_factor_args(r)
    r.add_argument("--snap", type=positive_int, metavar="K", help="ranks rounded to multiples of K")
    r.add_argument("--decomp", action="append", type=method_rule_type, metavar="PATTERN=METHOD[:RANK]", help=DECOMP_HELP)
    r.add_argument("--out", required=True, metavar="report.html", help="the HTML file to write")
    add_data_args(r, required=False)
    add_speed_args(r)
    r.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds (default 3)")
    r.add_argument("--no-latency", action="store_true", help="do not time the models (the report says 'not measured yet')")
    r.set_defaults(func=cmd_report, structure="size", argv=None)


def _add_analyze(sub) -> None:
    a = sub.add_parser("analyze", help="per-layer spectra, EVBMF ranks, params and MACs")
    add_model_args(a)
    a.add_argument("--json", metavar="OUT", help="write the analysis as JSON")
    a.set_defaults(func=cmd_analyze)


_PLAN_HELP = "full | vbmf | vbmf:K | energy:F | uniform:F | ratio:T | FILE.json"


def _add_plan_options(p, table_where: str) -> None:
    """``--plan``, ``--exclude``, ``--decompose-classifier``, ``--snap`` and ``--structure`` (compress, bench)."""
    p.add_argument("--plan", required=True, type=plan_type, metavar="SPEC", help=_PLAN_HELP)
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense (fnmatch, repeatable)")
    p.add_argument("--decompose-classifier", action="store_true", help="also decompose the output Linear (kept dense by default)")
    p.add_argument("--snap", type=positive_int, metavar="K", help="ranks rounded to multiples of K (e.g. 8; a ratio:T plan keeps its budget)")
    p.add_argument("--decomp", action="append", type=method_rule_type, metavar="PATTERN=METHOD[:RANK]", help=DECOMP_HELP)
    p.add_argument("--structure", choices=["size", "speed"], default="size",
                   help=f"speed: drop every factor a measured per-layer latency table ({table_where}) times slower than the "
                        "dense layer (ranks above its break-even); size (default): the plan as it is")


def _add_compress(sub) -> None:
    c = sub.add_parser("compress", help="decompose with a rank plan and export model.pt2, plan.json, metrics.json")
    add_model_args(c)
    _add_plan_options(c, "CPU, batch --speed-batch")
    add_factor_args(c)
    c.add_argument("--speed-batch", type=positive_int, default=64, metavar="N", help="batch of the latency table (default 64)")
    c.add_argument("--out", required=True, metavar="DIR", help="new or empty folder for model.pt2, plan.json, metrics.json")
    c.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing lrviz's files there")
    add_data_args(c, required=False)
    add_device_args(c, amp=True)
    c.add_argument("--finetune", type=count_or_zero, default=0, metavar="EPOCHS",
                   help="fine-tune after decomposing: on the training split (minus a validation part that picks the best epoch); "
                        "accuracies are reported on --data's test split, or on a held-out part when --data is one labelled set")
    c.add_argument("--train-data", metavar="NAME", help="data to fine-tune on (its train split; default: --data), e.g. the bundled "
                                                        "fashion-mnist-train-sample")
    c.add_argument("--lr", type=positive_float, default=0.01, help="fine-tuning learning rate (cosine decay)")
    c.add_argument("--distill", action="store_true", help="distil from the uncompressed model while fine-tuning")
    c.add_argument("--val-limit", type=positive_int, default=2000, metavar="N",
                   help="validation images (held out of the training data) that pick the best epoch")
    c.add_argument("--train-limit", type=positive_int, metavar="N", help="train on a subset of N images")
    c.set_defaults(func=cmd_compress)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="top-1/top-5/loss with a 95%% Wilson interval")
    add_model_args(e)
    e.add_argument("--plan", type=plan_type, metavar="SPEC", help="evaluate the model decomposed with this plan")
    e.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense")
    e.add_argument("--decompose-classifier", action="store_true", help="also decompose the output Linear")
    e.add_argument("--snap", type=positive_int, metavar="K", help="ranks rounded to multiples of K (e.g. 8; a ratio:T plan keeps its budget)")
    e.add_argument("--decomp", action="append", type=method_rule_type, metavar="PATTERN=METHOD[:RANK]", help=DECOMP_HELP)
    add_factor_args(e)
    add_data_args(e, required=True)
    add_device_args(e, amp=True)
    e.add_argument("--json", metavar="OUT", help="write {top1, top1_ci, top5, loss, n}")
    e.set_defaults(func=cmd_evaluate)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model: plain, ortho (orthogonal regularisation) or overparam (+ over-parameterised)")
    t.add_argument("model", metavar="MODEL", help="architecture, e.g. demo")
    t.add_argument("--weights", metavar="F", help="start from these weights (default: random init)")
    t.add_argument("--num-classes", type=positive_int, metavar="N")
    t.add_argument("--input-size", type=input_size_type, metavar="C,H,W")
    t.add_argument("--regime", choices=["plain", "ortho", "overparam"], default="overparam")
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--lr", type=positive_float, default=0.1)
    t.add_argument("--weight-decay", type=nonneg_float, default=5e-4)
    t.add_argument("--lam-ortho", type=nonneg_float, default=1e-3, help="orthogonality weight λ_o (cosine-decayed)")
    t.add_argument("--lam-group", type=nonneg_float, default=2e-4, help="core group-lasso weight λ_g (overparam, cosine-decayed)")
    t.add_argument("--seed", type=count_or_zero, default=0)
    t.add_argument("--out", required=True, metavar="DIR", help="writes model.pt, checkpoint.pt, history.json")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    add_data_args(t, required=True)
    add_device_args(t)
    t.add_argument("--val-limit", type=positive_int, default=None, metavar="N")
    t.add_argument("--train-limit", type=positive_int, metavar="N")
    t.set_defaults(func=cmd_train, batch_size=128)


def _add_sensitivity(sub) -> None:
    se = sub.add_parser("sensitivity", help="accuracy vs rank per layer and mode (one layer truncated at a time), cached")
    add_calibration_args(se)
    se.add_argument("--json", metavar="OUT", help="write the curves as JSON (with the backend and its number of workers)")
    _add_ray_options(se, "one task per layer")
    se.set_defaults(func=cmd_sensitivity)


def _add_ray_options(p, what: str) -> None:
    """``--ray [ADDRESS]`` and ``--ray-threads`` (the optional extra lrviz[ray]; :mod:`lrviz.distributed`)."""
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help=f"fan out over Ray, {what}, each on its own worker and device (pip install lrviz[ray]); no ADDRESS: a "
                        "local Ray with this machine's CPUs and GPUs; HOST:PORT or ray://HOST:PORT: a running cluster; auto: "
                        "the one Ray finds. Results, cache and store as a local run")
    p.add_argument("--ray-threads", type=positive_int, default=None, metavar="N",
                   help="torch threads (and CPUs) per Ray task (default: this process's thread count, which keeps the "
                        "arithmetic bitwise that of a local run; fewer = more workers)")


def _add_project(sub) -> None:
    pj = sub.add_parser("project", help="projected top-1 of a plan with an interval (the plan is never evaluated)")
    add_calibration_args(pj, plan=True)
    pj.add_argument("--plan", required=True, type=plan_type, metavar="SPEC", help=_PLAN_HELP)
    pj.add_argument("--basis", choices=["sensitivities", "proxy"], default="sensitivities",
                    help="sensitivities (measured once, cached) or the data-free energy proxy")
    pj.add_argument("--json", metavar="OUT", help="write {projected_top1, interval, params, macs, basis, ...}")
    pj.set_defaults(func=cmd_project)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="measured latency of the original and the planned model, end to end and per layer")
    add_model_args(b)
    _add_plan_options(b, "at the last --batch, on --device")
    add_speed_args(b)
    b.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds (default 5)")
    b.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    b.add_argument("--no-cache", action="store_true", help="measure again instead of reading ~/.cache/lrviz/bench")
    b.add_argument("--json", metavar="OUT", help="write {original_ms, planned_ms, speedup, macs_ratio, batch, device, threads, "
                                                 "layers, ...}: one object, or a list of them for several batch sizes")
    b.set_defaults(func=cmd_bench)


def _add_solve(sub) -> None:
    so = sub.add_parser("solve", help="ranks for a params, MACs or measured-latency target with the least projected loss")
    add_calibration_args(so, data_required=False, device=False)
    so.add_argument("--target", required=True, type=target_type, metavar="params:T|macs:T|latency:T",
                    help="e.g. params:4, macs:3 or latency:1.5 (1.5x faster, measured end to end at --batch on --device)")
    add_speed_args(so, batch_default="64", one_batch=True)
    so.add_argument("--snap", type=positive_int, metavar="K", help="ranks in multiples of K (e.g. 8)")
    so.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense")
    so.add_argument("--out", metavar="PLAN.json", help="write the plan")
    so.add_argument("--method", choices=["greedy", "knapsack", "bayes", "continuous"], default="greedy",
                    help="greedy: descend through the joint projection (default); knapsack: the exact optimum of the additive "
                         "model (each layer's own projected loss increase); bayes: Bayesian optimisation of the allocation's "
                         "shape on the projection (optuna, pip install lrviz[bayes]); continuous: a data-free continuous rank "
                         "search on the spectra (all but greedy: params and macs targets)")
    so.set_defaults(func=cmd_solve)


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="targets x strategies at matched cost: ranks, params, MACs, projected and measured top-1")
    add_calibration_args(sw)
    sw.add_argument("--targets", type=targets_type, default=[1.5, 2.0, 3.0, 4.0, 6.0, 8.0], metavar="T,T,...")
    sw.add_argument("--metric", choices=["params", "macs"], default="params")
    sw.add_argument("--strategies", type=strategies_type, default=["solver", "uniform", "vbmf"], metavar="S,S",
                    help="solver, knapsack, bayes, continuous, uniform, vbmf, energy")
    sw.add_argument("--snap", type=positive_int, metavar="K", help="solver ranks in multiples of K")
    sw.add_argument("--finetune-epochs", type=count_or_zero, default=0, metavar="E", help="also fine-tune each plan E epochs and measure again")
    sw.add_argument("--train-limit", type=positive_int, default=5000, metavar="N", help="training images per fine-tune")
    sw.add_argument("--no-projection", action="store_true", help="skip sensitivities when the solver is not in the sweep")
    sw.add_argument("--json", metavar="OUT", help="write the rows as JSON (with the backend and its number of workers)")
    _add_ray_options(sw, "one task per layer (sensitivities) and per plan (compress + evaluate)")
    sw.set_defaults(func=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    """The ``lrviz`` parser: one sub-command per ``cmd_*`` function."""
    p = Parser(prog="lrviz", description="Low-rank compression of CNNs: analyse spectra, choose ranks (VBMF, energy, ratio), decompose, evaluate, export.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--no-record", action="store_true", help="do not record results in the experiment store ($LRVIZ_DB)")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_analyze, _add_compress, _add_evaluate, _add_train, _add_sensitivity, _add_project, _add_solve, _add_sweep,
                _add_bench, _add_export, _add_report, add_runs):
        add(sub)
    m = sub.add_parser("models", help="list available models")
    m.set_defaults(func=cmd_models)
    return p


def _fail(message) -> int:
    """Report bad input: exactly one line on stderr, exit code 2."""
    print(f"lrviz: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return _fail(e)
    if hasattr(args, "argv"):
        args.argv = list(argv) if argv is not None else None  # what reproduces the command (lrviz report records it)
    # the CLI prints its own progress lines; library logs only with -v
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    if not args.verbose:  # torch's note when the compiler's import finds no CUDA toolkit is not the user's business
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        if getattr(args, "json", None):
            check_file_target(args.json, "--json")
        if getattr(args, "device", None):  # a device this machine lacks, or --amp off CUDA, fails before any work
            if not _device(args.device).startswith("cuda") and getattr(args, "amp", False):
                raise LrvizError("mixed precision (--amp) runs on CUDA only; drop --amp or use --device cuda")
        return int(args.func(args) or 0)
    except LrvizError as e:
        return _fail(e)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("lrviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
