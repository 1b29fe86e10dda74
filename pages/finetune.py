"""Fine-tune & export page: fine-tune the current plan in a background thread (live curve, stop
button), then download the plan JSON, the weights and a ``torch.export`` program (.pt2)."""

import io
import tempfile
from pathlib import Path

import streamlit as st
import torch

from lrviz import dashboard as dsh
from lrviz import plan_cost
from lrviz.errors import LrvizError
from lrviz.export import save_program
from lrviz.train import finetune
from pages import _common as common

ctx = common.require_ctx(decomposable=True)
a, mid = ctx.analysis, ctx.model_id
plan = common.current_plan(ctx)
pid = dsh.plan_key(plan)
cost = plan_cost(a, plan)
JOB_KEY = "_ft_job"
FT_KEY = "_finetuned"

st.title("Fine-tune & export")
st.markdown(
    f"Current plan **{common.current_label(ctx)}**: {dsh.human(cost.params_planned)} params ({cost.params_ratio:.2f}× fewer), "
    f"{dsh.human(cost.macs_planned)} MACs ({cost.macs_ratio:.2f}× fewer)."
)

# ---- finish a job that ended since the last run --------------------------------------------------
job_info = st.session_state.get(JOB_KEY)
if job_info is not None and job_info["job"].done and not job_info.get("final"):
    job = job_info["job"]
    job_info["final"] = True
    if job.error:
        st.session_state["_ft_error"] = job.error
    elif job.result is not None:
        r = job.result
        st.session_state.setdefault(FT_KEY, {})[job_info["model_id"]] = {
            "plan_key": job_info["plan_key"], "label": job_info["label"], "model": r.model, "history": r.history,
            "best_epoch": r.best_epoch, "val_top1": r.best_val_top1, "cancelled": r.cancelled, "stopped_early": r.stopped_early,
            "events": job.snapshot(), "config": job_info["config"],
        }
running = job_info is not None and not job_info["job"].done

# ---- data ----------------------------------------------------------------------------------------
train_set, val_set, data_note = None, ctx.dataset, None
if ctx.data_src is not None and ctx.dataset is not None:
    tname = dsh.train_dataset_name(ctx.data_src.name)
    tsrc = dsh.dataset_source(tname, ctx.loaded.input_size)
    try:
        train_set = common.cached_dataset(tsrc.key, "train", tsrc)
        data_note = f"training on the train split of {tname} ({len(train_set):,} images); validation on {ctx.data_src.label}"
    except LrvizError as exc:
        train_set, val_set = dsh.split_sample(ctx.dataset)
        data_note = (f"no training split available ({exc}); fine-tuning on half of {ctx.data_src.label} and validating on "
                     "the other half — accuracies from this data are optimistic")

st.subheader("Fine-tune")
if ctx.eval_problem:
    st.info(f"Fine-tuning needs labelled data that fits the model: {ctx.eval_problem}.")
elif train_set is not None:
    st.caption(data_note)
    with st.form("ft_form", border=True):
        c = st.columns(5)
        epochs = c[0].number_input("Epochs", 1, 100, 2, key="ft_epochs")
        lr = c[1].number_input("Peak learning rate", 1e-5, 1.0, 0.01, format="%.4f", key="ft_lr", help="SGD + Nesterov, cosine decay to 0")
        train_n = c[2].number_input("Training images", 64, len(train_set), min(5000, len(train_set)), 64, key="ft_train_n")
        val_n = c[3].number_input("Validation images", 50, len(val_set), min(1000, len(val_set)), 50, key="ft_val_n")
        distill = c[4].checkbox("Distil from original", value=False, key="ft_distill", help="knowledge distillation from the uncompressed model (α = 0.5, T = 4)")
        start = st.form_submit_button("Start fine-tuning", type="primary", disabled=running, key="ft_start")
    if start and not running:
        cfg = {"epochs": int(epochs), "lr": float(lr), "train_limit": int(train_n), "val_limit": int(val_n), "distill": bool(distill)}
        module, factors, teacher = ctx.module, ctx.factors, ctx.module if distill else None
        tset, vset = train_set, val_set

        def _target(progress, should_stop, plan=plan, cfg=cfg):
            model = dsh.planned_model(module, plan, factors)
            return finetune(model, tset, epochs=cfg["epochs"], lr=cfg["lr"], val_set=vset, val_limit=cfg["val_limit"],
                            train_limit=cfg["train_limit"], teacher=teacher, progress=progress, should_stop=should_stop)

        job = dsh.BackgroundJob(_target, name="finetune").start()
        st.session_state[JOB_KEY] = {"job": job, "plan_key": pid, "model_id": mid, "label": common.current_label(ctx), "config": cfg, "final": False}
        st.session_state.pop("_ft_error", None)
        running = True

if running:
    @st.fragment(run_every=1.0)
    def _live():
        info = st.session_state.get(JOB_KEY)
        if info is None:
            return
        job = info["job"]
        steps, epochs_df = dsh.finetune_history(job.snapshot())
        total = info["config"]["epochs"]
        events = job.snapshot()
        last = next((e for e in reversed(events) if e.get("event") == "step"), None)
        frac = 0.0 if last is None else min((last["epoch"] - 1 + last["step"] / max(last["steps"], 1)) / total, 1.0)
        text = "preparing (building the planned model, first validation)…" if last is None else (
            f"epoch {last['epoch']}/{total}, step {last['step']}/{last['steps']}, loss {last['loss']:.3f}")
        st.progress(frac, text=("stopping… " if job.stop_requested else "") + text)
        st.plotly_chart(dsh.finetune_figure(steps, epochs_df), key="ft_live_chart")
        st.button("Stop", key="ft_stop", on_click=job.stop, help="stop after the current step; the best weights so far are kept")
        if job.done:
            st.rerun()

    _live()

if st.session_state.get("_ft_error"):
    st.error(f"Fine-tuning failed: {st.session_state['_ft_error']}")

ft = common.finetuned_for(ctx, plan)
if ft is not None and not running:
    steps, epochs_df = dsh.finetune_history(ft["events"])
    status = "cancelled" if ft["cancelled"] else ("stopped early (no improvement)" if ft["stopped_early"] else "finished")
    val = "–" if ft["val_top1"] is None else f"{ft['val_top1']:.1%}"
    st.success(f"Fine-tuning {status}: best epoch {ft['best_epoch']}, validation top-1 {val} ({ft['config']['val_limit']} images).")
    st.plotly_chart(dsh.finetune_figure(steps, epochs_df), key="ft_result_chart")
    hist = [h.__dict__ for h in ft["history"]]
    if hist:
        st.dataframe(hist, hide_index=True, width="stretch")
elif not running:
    other = st.session_state.get(FT_KEY, {}).get(mid)
    if other is not None:
        st.caption(f"A fine-tuned model exists for another plan ({other['label']}); it is not used for the current ranks.")

# ---- export --------------------------------------------------------------------------------------
st.subheader("Export")
which = "fine-tuned" if ft is not None else "decomposed (not fine-tuned)"
st.caption(f"Exports the {which} model of the current plan. The plan JSON recreates the structure with "
           f"`lrviz compress MODEL --plan plan.json`; the .pt2 runs anywhere with `torch.export.load`.")
stem = f"{ctx.loaded.name}-{common.current_label(ctx)}".replace(":", "-").replace("/", "-").replace(" ", "_")
c = st.columns(3)
c[0].download_button("Download plan (JSON)", plan.to_json(), file_name=f"{stem}.plan.json", mime="application/json", key="dl_plan", width="stretch")

exports = st.session_state.setdefault("_exports", {})
ekey = (mid, pid, ft is not None and id(ft["model"]))
if ekey not in exports:
    if c[1].button("Build .pt2 and weights", key="build_export", type="primary", width="stretch", disabled=running):
        with st.status("Exporting…", expanded=True) as status:
            try:
                st.write("Building the model from cached factors…")
                model = ft["model"] if ft is not None else dsh.planned_model(ctx.module, plan, ctx.factors)
                st.write("Tracing with torch.export…")
                with tempfile.TemporaryDirectory() as tmp:
                    path = save_program(model, ctx.loaded.input_size, Path(tmp) / "model.pt2")
                    pt2 = path.read_bytes()
                buf = io.BytesIO()
                torch.save(model.state_dict(), buf)
                exports[ekey] = {"pt2": pt2, "state_dict": buf.getvalue()}
                status.update(label=f"Exported ({len(pt2) / 1e6:.2f} MB .pt2)", state="complete", expanded=False)
                st.rerun()  # redraw with the download buttons in place of the build button
            except LrvizError as exc:
                status.update(label="Export failed", state="error")
                st.error(f"Export failed: {exc}")
if ekey in exports:
    c[1].download_button("Download .pt2 program", exports[ekey]["pt2"], file_name=f"{stem}.pt2", mime="application/octet-stream", key="dl_pt2", width="stretch")
    c[2].download_button("Download weights (state_dict)", exports[ekey]["state_dict"], file_name=f"{stem}.pt", mime="application/octet-stream", key="dl_sd", width="stretch")
