"""Fine-tune & export page: fine-tune the current plan in a background thread (live curve, stop
button), then download the plan JSON, the weights and a ``torch.export`` program (.pt2)."""

import io
import tempfile
from pathlib import Path

import streamlit as st
import torch

from lrviz import compress, figures, fmt, plan_cost, sources, tables
from lrviz.errors import LrvizError
from lrviz.export import save_program
from lrviz.keys import plan_key
from lrviz.train import finetune
from pages import _state as state
from pages._jobs import BackgroundJob

JOB_KEY = "_ft_job"
ERROR_KEY = "_ft_error"


def finish_job() -> bool:
    """Keep the result of a fine-tuning job that ended since the last run; True while one runs."""
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
            st.session_state.setdefault(state.FINETUNED_KEY, {})[info["model_id"]] = {
                "plan_key": info["plan_key"], "label": info["label"], "model": r.model, "history": r.history,
                "best_epoch": r.best_epoch, "val_top1": r.best_val_top1, "cancelled": r.cancelled, "stopped_early": r.stopped_early,
                "events": job.snapshot(), "config": info["config"],
            }
    return not job.done


def training_data(ctx):
    """``(train set, validation set, note)``: the train split of the data when there is one, else half of it."""
    if ctx.data_src is None or ctx.dataset is None:
        return None, ctx.dataset, None
    tname = sources.train_dataset_name(ctx.data_src.name)
    tsrc = sources.dataset_source(tname, ctx.loaded.input_size)
    try:
        train_set = state.cached_dataset(tsrc.key, "train", tsrc)
        return train_set, ctx.dataset, f"training on the train split of {tname} ({len(train_set):,} images); validation on {ctx.data_src.label}"
    except LrvizError as exc:
        train_set, val_set = sources.split_sample(ctx.dataset)
        return train_set, val_set, (f"no training split available ({exc}); fine-tuning on half of {ctx.data_src.label} and validating "
                                    "on the other half — accuracies from this data are optimistic")


def start_job(ctx, plan, cfg: dict, train_set, val_set) -> None:
    module, factors, teacher = ctx.module, ctx.factors, ctx.module if cfg["distill"] else None

    def _target(progress, should_stop):
        model = compress(module, plan, factors)
        return finetune(model, train_set, epochs=cfg["epochs"], lr=cfg["lr"], val_set=val_set, val_limit=cfg["val_limit"],
                        train_limit=cfg["train_limit"], teacher=teacher, progress=progress, should_stop=should_stop)

    job = BackgroundJob(_target, name="finetune").start()
    st.session_state[JOB_KEY] = {"job": job, "plan_key": plan_key(plan), "model_id": ctx.model_id, "label": state.current_label(ctx),
                                 "config": cfg, "final": False}
    st.session_state.pop(ERROR_KEY, None)


def finetune_form(ctx, plan, running: bool) -> bool:
    """The fine-tuning settings and start button; returns whether a job runs now."""
    st.subheader("Fine-tune")
    train_set, val_set, note = training_data(ctx)
    if ctx.eval_problem:
        st.info(f"Fine-tuning needs labelled data that fits the model: {ctx.eval_problem}.")
        return running
    if train_set is None:
        return running
    st.caption(note)
    with st.form("ft_form", border=True):
        c = st.columns(5)
        epochs = c[0].number_input("Epochs", 1, 100, 2, key="ft_epochs")
        lr = c[1].number_input("Peak learning rate", 1e-5, 1.0, 0.01, format="%.4f", key="ft_lr", help="SGD + Nesterov, cosine decay to 0")
        train_n = c[2].number_input("Training images", 64, len(train_set), min(5000, len(train_set)), 64, key="ft_train_n")
        val_n = c[3].number_input("Validation images", 50, len(val_set), min(1000, len(val_set)), 50, key="ft_val_n")
        distill = c[4].checkbox("Distil from original", value=False, key="ft_distill",
                                help="knowledge distillation from the uncompressed model (α = 0.5, T = 4)")
        start = st.form_submit_button("Start fine-tuning", type="primary", disabled=running, key="ft_start")
    if start and not running:
        cfg = {"epochs": int(epochs), "lr": float(lr), "train_limit": int(train_n), "val_limit": int(val_n), "distill": bool(distill)}
        start_job(ctx, plan, cfg, train_set, val_set)
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
    st.success(f"Fine-tuning {status}: best epoch {ft['best_epoch']}, validation top-1 {fmt.percent(ft['val_top1'])} "
               f"({ft['config']['val_limit']} images).")
    st.plotly_chart(figures.finetune_figure(*tables.finetune_history(ft["events"])), key="ft_result_chart")
    hist = [h.__dict__ for h in ft["history"]]
    if hist:
        st.dataframe(hist, hide_index=True, width="stretch")


def build_exports(ctx, plan, ft) -> dict:
    """The ``.pt2`` program and the state_dict of the current plan's model (fine-tuned when it is)."""
    st.write("Building the model from cached factors…")
    model = ft["model"] if ft is not None else compress(ctx.module, plan, ctx.factors)
    st.write("Tracing with torch.export…")
    with tempfile.TemporaryDirectory() as tmp:
        pt2 = save_program(model, ctx.loaded.input_size, Path(tmp) / "model.pt2").read_bytes()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {"pt2": pt2, "state_dict": buf.getvalue()}


def export_panel(ctx, plan, ft, running: bool) -> None:
    st.subheader("Export")
    which = "fine-tuned" if ft is not None else "decomposed (not fine-tuned)"
    st.caption(f"Exports the {which} model of the current plan. The plan JSON recreates the structure with "
               f"`lrviz compress MODEL --plan plan.json`; the .pt2 runs anywhere with `torch.export.load`.")
    stem = f"{ctx.loaded.name}-{state.current_label(ctx)}".replace(":", "-").replace("/", "-").replace(" ", "_")
    c = st.columns(3)
    c[0].download_button("Download plan (JSON)", plan.to_json(), file_name=f"{stem}.plan.json", mime="application/json", key="dl_plan", width="stretch")
    exports = st.session_state.setdefault("_exports", {})
    ekey = (ctx.model_id, plan_key(plan), ft is not None and id(ft["model"]))
    if ekey not in exports and c[1].button("Build .pt2 and weights", key="build_export", type="primary", width="stretch", disabled=running):
        with st.status("Exporting…", expanded=True) as status:
            try:
                exports[ekey] = build_exports(ctx, plan, ft)
                status.update(label=f"Exported ({len(exports[ekey]['pt2']) / 1e6:.2f} MB .pt2)", state="complete", expanded=False)
                st.rerun()  # redraw with the download buttons in place of the build button
            except LrvizError as exc:
                status.update(label="Export failed", state="error")
                st.error(f"Export failed: {exc}")
    if ekey in exports:
        c[1].download_button("Download .pt2 program", exports[ekey]["pt2"], file_name=f"{stem}.pt2", mime="application/octet-stream",
                             key="dl_pt2", width="stretch")
        c[2].download_button("Download weights (state_dict)", exports[ekey]["state_dict"], file_name=f"{stem}.pt",
                             mime="application/octet-stream", key="dl_sd", width="stretch")


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


render()
