"""Fine-tune & export page: fine-tune the current plan in a background thread (live curve, stop
button), then download the plan JSON, the weights, a ``torch.export`` program (.pt2) and ONNX, each program checked
for parity against the PyTorch model (``lrviz.handoff``).

The data is split by :func:`lrviz.data.finetune_splits` into train / validation (best epoch) /
evaluation parts that share no image; the split (description and indices) is kept with the
fine-tuned model, so the Present page reports it on the evaluation part only.

A finished fine-tuning run is recorded in the experiment store (kind ``finetune``: epochs, best epoch,
validation top-1, the split) with its weights kept as a ``state_dict`` export directory in the store's
files (:func:`save_finetuned`: ``plan.json`` with the architecture + ``state_dict.pt``, loadable as a
MODEL by ``lrviz.models.load_model``), and the page lists the model's earlier runs, any of which can be
loaded back as this session's fine-tuned model. Exports built here are recorded too (kind ``export``).
"""

import copy
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import streamlit as st
import torch

from lrviz import RankPlan, compress, figures, fmt, plan_cost, sources, tables
from lrviz.data import finetune_splits
from lrviz.errors import LrvizError
from lrviz.handoff import architecture_record, check_parity, export_onnx, export_pt2, is_export_dir, load_export_dir, parity_batch
from lrviz.keys import plan_key
from lrviz.store import cost_metrics
from lrviz.train import EpochLog, finetune
from pages import _state as state
from pages._jobs import BackgroundJob

JOB_KEY = "_ft_job"
ERROR_KEY = "_ft_error"


def finish_job() -> bool:
    """Keep (and record) the result of a fine-tuning job that ended since the last run; True while one runs."""
    info = st.session_state.get(JOB_KEY)
    if info is None:
        return False
    job = info["job"]
    if job.done and not info.get("final"):
        info["final"] = True
        if job.error:
            st.session_state[ERROR_KEY] = job.error
        elif job.result is not None:
            r = job.result
            ft = {
                "plan_key": info["plan_key"], "label": info["label"], "model": r.model, "history": r.history,
                "best_epoch": r.best_epoch, "val_top1": r.best_val_top1, "cancelled": r.cancelled, "stopped_early": r.stopped_early,
                "events": job.snapshot(), "config": info["config"], "epochs_run": len(r.history),
                # which images trained, selected the epoch and may be reported (indices into the data of data_key)
                "data_key": info["data_key"], "split": info["split"],
            }
            ft["stored"] = record_finetune(info["ctx"], info["plan"], ft)
            st.session_state.setdefault(state.FINETUNED_KEY, {})[info["model_id"]] = ft
    return not job.done


# ---- the experiment store: fine-tuning runs and their weights ----------------------------------------------


def rebuild_spec(source: sources.ModelSource, loaded) -> tuple[str, str | None] | None:
    """``(spec, original weights)`` that :func:`lrviz.models.load_model` builds this model's architecture from
    (a builtin, torchvision, timm or ``module:factory`` name; the weights are only noted), or None when there is
    none: an exported program, or a model loaded from an export directory (a plan on top of another plan)."""
    spec = source.spec
    if not loaded.decomposable or spec.lower().endswith(".pt2") or is_export_dir(spec):
        return None
    return spec, source.filename or source.weights


def save_finetuned(folder: Path, source: sources.ModelSource, loaded, plan, model) -> dict:
    """Write ``model`` (fine-tuned ``plan`` of ``loaded``) into the empty ``folder`` as a ``state_dict`` export
    directory — ``plan.json`` (the plan, the architecture, ``format``, the round trip's parity) and
    ``state_dict.pt`` — rebuilt from those files and checked against ``model`` before it counts (the
    :func:`lrviz.handoff.load_export_dir` round trip, as ``lrviz export --format state_dict`` checks it).
    ``model`` is not changed (an eval-mode copy is saved). Returns the parity record.

    Raises
    ------
    LrvizError
        When the architecture cannot be rebuilt from a name (:func:`rebuild_spec`) or the round trip fails.
    """
    spec = rebuild_spec(source, loaded)
    if spec is None:
        raise LrvizError(f"the architecture of {loaded.name} cannot be rebuilt from a name (an exported program or an export "
                         "directory), so its fine-tuned weights are not kept as a model")
    net = copy.deepcopy(model).eval()
    doc = plan.to_dict()
    doc["architecture"] = architecture_record(spec[0], loaded.input_size, loaded.num_classes, spec[1])
    doc["format"] = "state_dict"
    folder = Path(folder)
    torch.save(net.state_dict(), folder / "state_dict.pt")
    (folder / "plan.json").write_text(json.dumps(doc, indent=1))
    rebuilt, _, _ = load_export_dir(folder)
    x = parity_batch(loaded.input_size)
    with torch.no_grad():
        doc["parity"] = check_parity(net(x), rebuilt(x), "state_dict round trip")
    (folder / "plan.json").write_text(json.dumps(doc, indent=1))
    return doc["parity"]


def finetune_metrics(ft: dict, cost) -> dict:
    """What a fine-tuning run is recorded with: epochs, best epoch, validation top-1 and the images of each part."""
    split = ft["split"]
    return {"epochs_run": ft["epochs_run"], "best_epoch": ft["best_epoch"], "val_top1": ft["val_top1"], "val_n": split["val"]["n"],
            "train_n": split["train"]["n"], "eval_n": split["eval"]["n"], "cancelled": ft["cancelled"],
            "stopped_early": ft["stopped_early"], **{f"cfg_{k}": v for k, v in ft["config"].items()}, **cost_metrics(cost)}


def record_finetune(ctx, plan, ft: dict) -> dict:
    """Record a finished fine-tuning run with its weights kept in the store's files (:func:`save_finetuned`);
    ``{"id", "artifact", "note"}`` (id None: not recorded; artifact None: the weights not kept, the note says why)."""
    store = state.experiment_store()
    if store is None:
        return {"id": None, "artifact": None, "note": "not recorded: the experiment store cannot be used"}
    artifact = state.store_call("keeping the fine-tuned weights", lambda s: s.new_artifact_dir("finetune"))
    note = "weights not kept: no folder for them"
    if artifact is not None:
        try:
            with st.spinner("Keeping the fine-tuned weights in the experiment store (checked by rebuilding them)…"):
                parity = save_finetuned(artifact, ctx.source, ctx.loaded, plan, ft["model"])
            note = f"rebuilt from its files with max |difference| {parity['max_abs_diff']:.2g}"
        except (LrvizError, OSError, RuntimeError) as exc:  # no weights kept; the run is still recorded
            shutil.rmtree(artifact, ignore_errors=True)
            artifact, note = None, f"weights not kept: {exc}"
    payload = {"label": ft["label"], "config": ft["config"], "split": ft["split"], "data_key": ft["data_key"],
               "history": [h.__dict__ for h in ft["history"]], "note": note}
    rid = state.record(ctx, "finetune", plan=plan, name=ft["label"], metrics=finetune_metrics(ft, plan_cost(ctx.analysis, plan)),
                       payload=payload, artifact=artifact)
    if rid is None and artifact is not None:
        shutil.rmtree(artifact, ignore_errors=True)  # no record points to it
        artifact = None
    return {"id": rid, "artifact": None if artifact is None else str(artifact), "note": note}


def load_finetuned(ctx, run) -> dict:
    """A recorded fine-tuning run loaded back (from its export directory) as this session's fine-tuned model of
    its plan; the plan becomes the current one."""
    if not run.artifact or not Path(run.artifact).is_dir():
        raise LrvizError(f"record {run.id} keeps no weights" + (f" ({run.artifact} is gone)" if run.artifact else ""))
    p, m = run.payload if isinstance(run.payload, dict) else {}, run.metrics
    # the dashboard keeps the split in the payload; ``lrviz compress --finetune`` in its metrics.json (the payload)
    split = p.get("split") or ((p.get("metrics") or {}).get("finetune") or {}).get("data")
    if not isinstance(split, dict):
        raise LrvizError(f"record {run.id} does not say which images it was trained and validated on")
    try:
        history = tuple(EpochLog(**h) for h in p.get("history", []))
    except TypeError as exc:
        raise LrvizError(f"record {run.id} has an unreadable history ({exc})") from exc
    plan = RankPlan.from_json(run.plan_json, ctx.analysis.layers)
    net, _, _ = load_export_dir(run.artifact)
    ft = {"plan_key": plan_key(plan), "label": run.name or plan.spec, "model": net, "history": history,
          "best_epoch": m.get("best_epoch"), "val_top1": m.get("val_top1"), "cancelled": bool(m.get("cancelled")),
          "stopped_early": bool(m.get("stopped_early")), "events": [{"event": "epoch", **h.__dict__} for h in history],
          "config": p.get("config", {}), "epochs_run": m.get("epochs_run", len(history)), "split": split,
          "data_key": p.get("data_key") or (ctx.data_key if run.data == ctx.store_data else None),
          "stored": {"id": run.id, "artifact": run.artifact, "note": "loaded from the experiment store"}}
    state.set_plan(ctx, plan, ft["label"])
    st.session_state.setdefault(state.FINETUNED_KEY, {})[ctx.model_id] = ft
    return ft


def earlier_runs(ctx) -> None:
    """The model's fine-tuning runs in the experiment store (every session and data); load one back."""
    runs = state.stored_runs(ctx, "finetune", all_data=True)
    if not runs:
        return
    st.subheader("Earlier fine-tuning runs")
    rows = [{"id": r.id, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)), "plan": r.name, "data": r.data,
             "epochs": r.metrics.get("epochs_run"), "best epoch": r.metrics.get("best_epoch"),
             "val top-1": None if r.metrics.get("val_top1") is None else 100.0 * r.metrics["val_top1"],
             "validation images": r.metrics.get("val_n"), "origin": r.origin, "weights": r.artifact or "not kept"}
            for r in reversed(runs)]
    st.dataframe(rows, hide_index=True, width="stretch", height=state.table_height(len(rows)),
                 column_config={"val top-1": st.column_config.NumberColumn(format="%.1f%%")})
    st.caption("Validation top-1 of the best epoch, on the validation images (never the evaluation images). The weights are a "
               "state_dict export directory: `lrviz evaluate DIR` loads it as a model.")
    by_id = {r.id: r for r in runs}
    c = st.columns([3, 1])
    chosen = c[0].selectbox("Run", [r["id"] for r in rows], key="ft_history_choice", label_visibility="collapsed",
                            format_func=lambda i: f"#{i} · {by_id[i].name} · {by_id[i].data}")
    if c[1].button("Use this fine-tuned model", key="ft_history_load", width="stretch",
                   disabled=not (by_id[chosen].artifact and by_id[chosen].plan_json)):
        try:
            with st.spinner("Loading the fine-tuned weights…"):
                load_finetuned(ctx, by_id[chosen])
        except LrvizError as exc:
            st.error(f"Cannot load record {chosen}: {exc}")
        else:
            st.rerun()


def training_data(ctx, train_limit: int | None = None, val_limit: int | None = None):
    """``(DataSplits, note)`` of the current data, or ``(None, None)`` without data.

    Trains on the training counterpart of the evaluation data (the bundled train sample for the
    bundled test sample, the train split otherwise) minus a validation part that picks the best
    epoch; the evaluation part is the test data. One labelled set (an ImageFolder), or data without
    a train split, is split three ways and the evaluation part held out.
    """
    if ctx.data_src is None or ctx.dataset is None:
        return None, None
    tsrc = sources.training_source(ctx.data_src, ctx.loaded.input_size)
    try:
        train_set, note = state.cached_dataset(tsrc.key, "train", tsrc), None
    except LrvizError as exc:
        train_set, note = None, f"no training split available ({exc}); "
    splits = finetune_splits(ctx.dataset, train_set, train_limit=train_limit, val_limit=val_limit)
    return splits, (note or "") + splits.description[0].upper() + splits.description[1:] + "."


def start_job(ctx, plan, cfg: dict, splits) -> None:
    module, factors, teacher = ctx.module, ctx.factors, ctx.module if cfg["distill"] else None
    train_set, val_set = splits.train.dataset, splits.val.dataset

    def _target(progress, should_stop):
        model = compress(module, plan, factors)
        return finetune(model, train_set, epochs=cfg["epochs"], lr=cfg["lr"], val_set=val_set, val_limit=None,
                        train_limit=None, teacher=teacher, progress=progress, should_stop=should_stop)

    job = BackgroundJob(_target, name="finetune").start()
    st.session_state[JOB_KEY] = {"job": job, "plan_key": plan_key(plan), "model_id": ctx.model_id, "label": state.current_label(ctx),
                                 "config": cfg, "final": False, "data_key": ctx.data_key, "split": splits.record(), "ctx": ctx,
                                 "plan": plan}
    st.session_state.pop(ERROR_KEY, None)


def finetune_form(ctx, plan, running: bool) -> bool:
    """The fine-tuning settings and start button; returns whether a job runs now."""
    st.subheader("Fine-tune")
    if ctx.eval_problem:
        st.info(f"Fine-tuning needs labelled data that fits the model: {ctx.eval_problem}.")
        return running
    try:
        splits, note = training_data(ctx)
    except LrvizError as exc:
        st.info(f"Fine-tuning needs more data: {exc}.")
        return running
    if splits is None:
        return running
    st.caption(note)
    n_train, n_val = splits.train.n, splits.val.n
    with st.form("ft_form", border=True):
        c = st.columns(5)
        epochs = c[0].number_input("Epochs", 1, 100, 2, key="ft_epochs")
        lr = c[1].number_input("Peak learning rate", 1e-5, 1.0, 0.01, format="%.4f", key="ft_lr", help="SGD + Nesterov, cosine decay to 0")
        train_n = c[2].number_input("Training images", min(64, n_train), n_train, min(5000, n_train), min(64, n_train), key="ft_train_n",
                                    help=f"of the {n_train:,} {splits.train.what} of the train part")
        val_n = c[3].number_input("Validation images", min(50, n_val), n_val, min(1000, n_val), min(50, n_val), key="ft_val_n",
                                  help=f"pick the best epoch; of the {n_val:,} validation images, disjoint from the training and the "
                                       "evaluation images")
        distill = c[4].checkbox("Distil from original", value=False, key="ft_distill",
                                help="knowledge distillation from the uncompressed model (α = 0.5, T = 4)")
        start = st.form_submit_button("Start fine-tuning", type="primary", disabled=running, key="ft_start")
    if start and not running:
        cfg = {"epochs": int(epochs), "lr": float(lr), "train_limit": int(train_n), "val_limit": int(val_n), "distill": bool(distill)}
        used, _ = training_data(ctx, cfg["train_limit"], cfg["val_limit"])
        start_job(ctx, plan, cfg, used)
        return True
    return running


@st.fragment(run_every=1.0)
def live_progress() -> None:
    """The running job's progress and loss curve, redrawn every second; a full rerun when it ends."""
    info = st.session_state.get(JOB_KEY)
    if info is None:
        return
    job = info["job"]
    events = job.snapshot()
    steps, epochs = tables.finetune_history(events)
    total = info["config"]["epochs"]
    last = next((e for e in reversed(events) if e.get("event") == "step"), None)
    frac = 0.0 if last is None else min((last["epoch"] - 1 + last["step"] / max(last["steps"], 1)) / total, 1.0)
    text = "preparing (building the planned model, first validation)…" if last is None else (
        f"epoch {last['epoch']}/{total}, step {last['step']}/{last['steps']}, loss {last['loss']:.3f}")
    st.progress(frac, text=("stopping… " if job.stop_requested else "") + text)
    st.plotly_chart(figures.finetune_figure(steps, epochs), key="ft_live_chart")
    st.button("Stop", key="ft_stop", on_click=job.stop, help="stop after the current step; the best weights so far are kept")
    if job.done:
        st.rerun()


def finetune_result(ctx, ft) -> None:
    if ft is None:
        other = st.session_state.get(state.FINETUNED_KEY, {}).get(ctx.model_id)
        if other is not None:
            st.caption(f"A fine-tuned model exists for another plan ({other['label']}); it is not used for the current ranks.")
        return
    status = "cancelled" if ft["cancelled"] else ("stopped early (no improvement)" if ft["stopped_early"] else "finished")
    split = ft["split"]
    st.success(f"Fine-tuning {status}: best epoch {ft['best_epoch']}, validation top-1 {fmt.percent(ft['val_top1'])} "
               f"({split['val']['n']:,} validation images).")
    st.caption(f"Data: {split['description']}. The Present page reports this model on the {split['eval']['n']:,} evaluation "
               "images only.")
    st.plotly_chart(figures.finetune_figure(*tables.finetune_history(ft["events"])), key="ft_result_chart")
    hist = [h.__dict__ for h in ft["history"]]
    if hist:
        st.dataframe(hist, hide_index=True, width="stretch")
    stored = ft.get("stored") or {}
    if stored.get("id") is None:
        st.caption(f"Not in the experiment store ({stored.get('note') or 'not recorded'}): it is lost when this tab reloads.")
    elif stored.get("artifact"):
        st.caption(f"Experiment store record #{stored['id']}; weights kept in `{stored['artifact']}` ({stored['note']}), a "
                   "state_dict export directory that `lrviz evaluate DIR` loads as a model.")
    else:
        st.caption(f"Experiment store record #{stored['id']} (its metrics only; {stored['note']}).")


def build_exports(ctx, plan, ft) -> dict:
    """The ``.pt2`` program, the ONNX file and the state_dict of the current plan's model (fine-tuned when it
    is); both programs are checked against the PyTorch model on a fixed batch (``lrviz.handoff``)."""
    st.write("Building the model from cached factors…")
    model = ft["model"] if ft is not None else compress(ctx.module, plan, ctx.factors)
    x = parity_batch(ctx.loaded.input_size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        st.write("Tracing with torch.export…")
        out["pt2_parity"] = export_pt2(model, ctx.loaded.input_size, Path(tmp) / "model.pt2", x)
        out["pt2"] = (Path(tmp) / "model.pt2").read_bytes()
        st.write("Exporting ONNX and checking it with onnxruntime…")
        try:
            out["onnx_parity"] = export_onnx(model, ctx.loaded.input_size, Path(tmp) / "model.onnx", x)
            out["onnx"] = (Path(tmp) / "model.onnx").read_bytes()
        except LrvizError as exc:  # the .pt2 and weights are still offered
            out["onnx_error"] = str(exc)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out["state_dict"] = buf.getvalue()
    return out


def record_exports(ctx, plan, ft, built: dict) -> None:
    """Record each program built (kind ``export``: its format and parity against the PyTorch model)."""
    for fmt_name in ("pt2", "onnx"):
        par = built.get(f"{fmt_name}_parity")
        if par is not None:
            state.record(ctx, "export", plan=plan, name=f"{state.current_label(ctx)} {fmt_name}",
                         metrics={"format": fmt_name, "max_abs_diff": par["max_abs_diff"], "output_scale": par["output_scale"],
                                  "batch": par["batch"], "finetuned": ft is not None, "bytes": len(built[fmt_name]),
                                  **cost_metrics(plan_cost(ctx.analysis, plan))})


def _parity_text(rec: dict) -> str:
    return f"max |difference| {rec['max_abs_diff']:.2g} at output scale {rec['output_scale']:.2g} on a batch of {rec['batch']}"


def export_panel(ctx, plan, ft, running: bool) -> None:
    st.subheader("Export")
    which = "fine-tuned" if ft is not None else "decomposed (not fine-tuned)"
    st.caption(f"Exports the {which} model of the current plan. The plan JSON recreates the structure with "
               f"`lrviz compress MODEL --plan plan.json`; the .pt2 runs anywhere with `torch.export.load`, the ONNX file with "
               "onnxruntime (opset 18, dynamic batch); `lrviz export` writes the same from the command line.")
    stem = f"{ctx.loaded.name}-{state.current_label(ctx)}".replace(":", "-").replace("/", "-").replace(" ", "_")
    c = st.columns(3)
    c[0].download_button("Download plan (JSON)", plan.to_json(), file_name=f"{stem}.plan.json", mime="application/json", key="dl_plan", width="stretch")
    exports = st.session_state.setdefault("_exports", {})
    ekey = (ctx.model_id, plan_key(plan), ft is not None and id(ft["model"]))
    if ekey not in exports and c[1].button("Build .pt2, ONNX and weights", key="build_export", type="primary", width="stretch", disabled=running):
        with st.status("Exporting…", expanded=True) as status:
            try:
                exports[ekey] = build_exports(ctx, plan, ft)
                record_exports(ctx, plan, ft, exports[ekey])
                status.update(label=f"Exported ({len(exports[ekey]['pt2']) / 1e6:.2f} MB .pt2)", state="complete", expanded=False)
                st.rerun()  # redraw with the download buttons in place of the build button
            except LrvizError as exc:
                status.update(label="Export failed", state="error")
                st.error(f"Export failed: {exc}")
    if ekey in exports:
        e = exports[ekey]
        c[1].download_button("Download .pt2 program", e["pt2"], file_name=f"{stem}.pt2", mime="application/octet-stream",
                             key="dl_pt2", width="stretch")
        c[2].download_button("Download weights (state_dict)", e["state_dict"], file_name=f"{stem}.pt",
                             mime="application/octet-stream", key="dl_sd", width="stretch")
        if "onnx" in e:
            c[0].download_button("Download ONNX", e["onnx"], file_name=f"{stem}.onnx", mime="application/octet-stream",
                                 key="dl_onnx", width="stretch")
            st.caption(f"Checked against the PyTorch model: .pt2 {_parity_text(e['pt2_parity'])}; ONNX (opset "
                       f"{e['onnx_parity']['opset']}, {e['onnx_parity']['runtime']}) {_parity_text(e['onnx_parity'])}.")
        else:
            st.caption(f"Checked against the PyTorch model: .pt2 {_parity_text(e['pt2_parity'])}.")
            st.error(f"ONNX: {e['onnx_error']}")


def render() -> None:
    ctx = state.require_ctx(decomposable=True)
    plan = state.current_plan(ctx)
    cost = plan_cost(ctx.analysis, plan)
    st.title("Fine-tune & export")
    st.markdown(f"Current plan **{state.current_label(ctx)}**: {fmt.human(cost.params_planned)} params ({cost.params_ratio:.2f}× fewer), "
                f"{fmt.human(cost.macs_planned)} MACs ({cost.macs_ratio:.2f}× fewer).")
    running = finetune_form(ctx, plan, finish_job())
    if running:
        live_progress()
    if st.session_state.get(ERROR_KEY):
        st.error(f"Fine-tuning failed: {st.session_state[ERROR_KEY]}")
    ft = state.finetuned_for(ctx, plan)
    if not running:
        finetune_result(ctx, ft)
    export_panel(ctx, plan, ft, running)
    earlier_runs(ctx)


render()
