"""The sidebar (model, data, quick-evaluation size) and the navigation that app.py draws around every page.

:func:`router` is app.py's whole job: page config, ``st.navigation`` over the explicit page list, and
the sidebar, which loads the chosen model and data (cached, ``pages/_state.py``) into the run's
:class:`pages._state.Context`. Not a page itself.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import streamlit as st

from lrviz import sources
from lrviz.data import images_label
from lrviz.devices import device_label
from lrviz.errors import LrvizError
from pages import _state as state

QUICK_SIZES = [100, 200, 300, 500, 1000, 2000]
DEFAULT_QUICK = 500
DATA_CHOICES = {
    "sample": "Fashion-MNIST sample (bundled, 2,000 test images)",
    "fashion-mnist": "Fashion-MNIST test set (10,000 images)",
    "imagefolder": "ImageFolder (a local folder)",
}
MODEL_CHOICES = {
    "builtin": "Bundled model",
    "torchvision": "torchvision architecture",
    "program": "Exported program (.pt2)",
    "export": "Export folder (lrviz export, state_dict)",
    "recorded": "Fine-tuned / exported (experiment store)",
}
UPLOADS_KEY = "_lrviz_uploads"
#: Streamlit's toolbar: viewer items only (no Deploy button, no developer menu).
TOOLBAR_MODE = "viewer"
STATE_DICT_TYPES = [s[1:] for s in sources.STATE_DICT_SUFFIXES]


class _NeedInput(Exception):
    """The sidebar waits for the user (an upload, a folder): shown as an info, not an error."""


class _Rejected(Exception):
    """The user's choice cannot be opened; the message is the whole error line."""


# ---- model ------------------------------------------------------------------------------------------


def _state_dict_upload(key: str, arch: str, hint: str) -> sources.ModelSource:
    up = st.sidebar.file_uploader("state_dict file (.pt/.pth)", type=STATE_DICT_TYPES, key=key)
    if up is None:
        raise _NeedInput(hint)
    return _uploaded_source(up, "state_dict", arch)


def _model_sidebar() -> sources.ModelSource:
    from lrviz.models import available_models, builtin_models

    sb = st.sidebar
    kind = sb.radio("Model", list(MODEL_CHOICES), format_func=MODEL_CHOICES.get, key="model_kind")
    if kind == "builtin":
        names = list(builtin_models())
        name = sb.selectbox("Bundled model", names, index=names.index("demo") if "demo" in names else 0, key="builtin_name")
        weights = sb.radio("Weights", ["default", "upload"], key="builtin_weights",
                           format_func={"default": "bundled (random if not bundled yet)", "upload": "upload a state_dict"}.get)
        if weights == "upload":
            return _state_dict_upload("sd_upload_builtin", name, "upload a state_dict file in the sidebar (or choose the bundled weights)")
        return _builtin_source(name)
    if kind == "torchvision":
        archs = available_models()["torchvision"]
        arch = sb.selectbox("Architecture", archs, index=archs.index("resnet18") if "resnet18" in archs else 0, key="tv_arch")
        weights = sb.radio("Weights", ["none", "pretrained", "upload"], key="tv_weights",
                           format_func={"none": "random init", "pretrained": "pretrained (needs internet the first time)",
                                        "upload": "upload a state_dict"}.get)
        if weights == "upload":
            return _state_dict_upload("sd_upload_tv", arch, "upload a state_dict file in the sidebar")
        return sources.torchvision_source(arch, weights)
    if kind == "export":
        return _export_folder_source()
    if kind == "recorded":
        return _recorded_source()
    up = sb.file_uploader("torch.export program (.pt2)", type=["pt2"], key="pt2_upload")
    if up is None:
        raise _NeedInput("upload a .pt2 file in the sidebar")
    return _uploaded_source(up, "program")


def _export_folder_source() -> sources.ModelSource:
    """A local export directory typed in the sidebar (the dashboard runs where the CLI wrote it)."""
    folder = st.sidebar.text_input("Export folder", key="export_dir_path", placeholder="/path/to/export",
                                   help="A folder written by `lrviz export MODEL --plan SPEC --format state_dict --out DIR` "
                                        "(plan.json + state_dict.pt): the compressed model is rebuilt from it").strip()
    if not folder:
        raise _NeedInput("enter the path of an export folder in the sidebar (lrviz export MODEL --plan SPEC "
                         "--format state_dict --out DIR)")
    try:
        return sources.export_dir_source(folder)
    except LrvizError as exc:
        raise _Rejected(f"Export folder rejected: {exc}") from exc


def _recorded_source() -> sources.ModelSource:
    """A fine-tuned or exported model recorded in the experiment store (its export directory)."""
    try:
        entries = {e.run_id: e for e in sources.recorded_models()}
    except LrvizError as exc:
        raise _Rejected(f"Cannot list the recorded models: {exc}") from exc
    if not entries:
        raise _NeedInput("the experiment store records no fine-tuned or exported model with a state_dict yet "
                         "(fine-tune on the Fine-tune & export page, or run lrviz export … --format state_dict)")
    run_id = st.sidebar.selectbox("Recorded model", list(entries), format_func=lambda i: entries[i].label, key="recorded_run")
    entry = entries[run_id]
    try:
        return sources.export_dir_source(entry.path)
    except LrvizError as exc:
        raise _Rejected(f"Recorded model (run {entry.run_id}): {exc}") from exc


def _uploaded_source(up, kind: str, arch: str | None = None) -> sources.ModelSource:
    """The model source of an uploaded file, stored once per upload and session.

    Streamlit hands the same upload to every rerun of the script; hashing and verifying it again on
    every slider move would cost seconds for a large checkpoint. So the source is kept per session,
    keyed by the upload's id, and stored again only when its file has gone (pruned by the folder's
    size cap, see ``lrviz.uploads.store_upload``).
    """
    file_id = getattr(up, "file_id", None)
    memo = st.session_state.setdefault(UPLOADS_KEY, {})
    key = (kind, arch, file_id, up.name, up.size)
    src = memo.get(key) if file_id is not None else None
    stored = sources.upload_path(src) if src is not None else None
    if src is not None and stored is not None and stored.is_file():
        return src
    if kind == "program":
        src = sources.program_source(up.getvalue(), up.name)
    else:
        src = sources.state_dict_source(arch, up.getvalue(), up.name)
    if file_id is not None:
        memo.clear()  # one upload per session is in use at a time
        memo[key] = src
    return src


def _builtin_source(name: str) -> sources.ModelSource:
    """A bundled model, keyed also by its weights file's modification time (a re-bundled file reloads)."""
    from lrviz.models import builtin_models

    src = sources.builtin_source(name)
    entry = builtin_models().get(name)
    path = entry.resolved_weights_path() if entry is not None else None
    stamp = path.stat().st_mtime_ns if path is not None and path.is_file() else "none"
    return sources.ModelSource(key=f"{src.key}:{stamp}", spec=src.spec, weights=src.weights, label=src.label)


# ---- data -------------------------------------------------------------------------------------------


def _data_sidebar(loaded) -> tuple[sources.DataSource | None, Any, str | None]:
    sb = st.sidebar
    choice = sb.radio("Evaluation data", list(DATA_CHOICES), format_func=DATA_CHOICES.get, key="data_kind")
    if choice == "sample":
        name, label = "fashion-mnist-sample", "Fashion-MNIST sample (2,000)"
    elif choice == "fashion-mnist":
        name, label = "fashion-mnist", "Fashion-MNIST test (10,000)"
    else:
        folder = sb.text_input("Image folder (one sub-folder per class)", key="imagefolder_path").strip()
        if not folder:
            return None, None, "enter an image folder in the sidebar"
        name, label = f"imagefolder:{folder}", f"ImageFolder {folder}"
    src = sources.dataset_source(name, loaded.input_size, label)
    try:
        return src, state.cached_dataset(src.key, "test", src), None
    except LrvizError as exc:
        sb.error(f"Dataset: {exc}")
        return src, None, str(exc)


# ---- data-aware factors -------------------------------------------------------------------------------

FACTOR_IMAGES = 500


def _factors_sidebar(model_key: str, loaded, data_src, dataset):
    """The "Data-aware factors" toggle: input statistics on training images (the evaluation data's training
    counterpart), or None (weight-only factors, the default, or when there are no separate training images)."""
    if not loaded.decomposable or data_src is None or dataset is None:
        return None
    on = st.sidebar.toggle("Data-aware factors (experimental)", key="data_factors",
                           help=f"Tucker-2 / SVD bases whitened by each layer's input statistics on {FACTOR_IMAGES} training "
                                "images, so truncation minimises the layer's output error instead of its weights' error. "
                                "On the bundled demo they lose accuracy at the same ranks (see the README).")
    if not on:
        return None
    from lrviz.data import same_images

    tsrc = sources.training_source(data_src, loaded.input_size)
    try:
        train = state.cached_dataset(tsrc.key, "train", tsrc)
    except LrvizError as exc:
        st.sidebar.error(f"Data-aware factors need training images: {exc}")
        return None
    if same_images(train, dataset):
        st.sidebar.error("Data-aware factors need training images apart from the evaluation images; this data has no "
                         "separate training split")
        return None
    n = min(FACTOR_IMAGES, len(train))
    try:
        stats = state.cached_stats(f"{model_key}|{tsrc.key}|{n}", loaded.module, train, n)
    except (LrvizError, RuntimeError) as exc:
        st.sidebar.error(f"Could not collect input statistics: {' '.join(str(exc).split())[:300]}")
        return None
    st.sidebar.caption(f"Factors: data-aware, from {n:,} {images_label(train)}")
    return stats


# ---- the context and the router -----------------------------------------------------------------------


def _plain(text: str) -> str:
    """``text`` with Markdown's special characters escaped (a folder path is shown as typed)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~$-])", r"\\\1", text)


def _fail(level: str, message: str) -> None:
    """Remember why there is no context: the page shows it once (``_state.require_ctx``), as an error
    or an info; the sidebar does not repeat it."""
    st.session_state[state.ERR_KEY] = (level, message)


def build_context() -> state.Context | None:
    """Draw the sidebar, load (cached) model, analysis and dataset; None (with a message) on failure."""
    st.session_state.pop(state.CTX_KEY, None)
    st.session_state.pop(state.ERR_KEY, None)
    st.sidebar.title("lrviz")
    try:
        source = _model_sidebar()
    except _NeedInput as exc:
        return _fail("info", str(exc))
    except _Rejected as exc:
        return _fail("error", str(exc))
    except LrvizError as exc:
        return _fail("error", f"Upload rejected: {exc}")
    try:
        loaded, notes = state.cached_model(source.key, source)
        analysis = state.cached_analysis(source.key, loaded)
    except LrvizError as exc:
        return _fail("error", f"Could not load the model: {exc}")
    st.sidebar.caption(f"**{loaded.name}** · input {'×'.join(map(str, loaded.input_size))} · {loaded.num_classes} classes")
    if source.note:
        st.sidebar.caption(_plain(source.note))
    st.sidebar.caption(f"Runs on {device_label()}", help="CUDA when this machine has a GPU (evaluations, sensitivities, "
                       "fine-tuning), else the CPU")
    data_src, dataset, data_error = _data_sidebar(loaded)
    quick_n = st.sidebar.select_slider("Quick-evaluation images", QUICK_SIZES, value=DEFAULT_QUICK, key="quick_n",
                                       help="Subset size (deterministic) for quick evaluations, sweeps and saved configurations")
    stats = _factors_sidebar(source.key, loaded, data_src, dataset)
    if stats is not None:  # every result of data-aware factors is keyed apart from the weight-only ones
        source = dataclasses.replace(source, key=f"{source.key}|data-factors:{stats.fingerprint()}")
    ctx = state.Context(source, loaded, list(notes), analysis, data_src, dataset, data_error, int(quick_n), stats)
    st.session_state[state.CTX_KEY] = ctx
    return ctx


def pages() -> list:
    """The dashboard's pages, in navigation order (listed explicitly; the ``_*.py`` helpers are not pages)."""
    return [
        st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
        st.Page("pages/spectra.py", title="Spectra", icon=":material/ssid_chart:", url_path="spectra"),
        st.Page("pages/ranks.py", title="Ranks", icon=":material/tune:", url_path="ranks"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        st.Page("pages/finetune.py", title="Fine-tune & export", icon=":material/build:", url_path="finetune"),
        st.Page("pages/present.py", title="Present", icon=":material/slideshow:", url_path="present"),
    ]


def router():
    """What app.py does: page config, navigation, sidebar + context. Returns the selected page."""
    st.set_option("client.toolbarMode", TOOLBAR_MODE)  # no Deploy button (also in .streamlit/config.toml)
    st.set_page_config(page_title="lrviz — low-rank CNN compression", page_icon=":material/compress:", layout="wide")
    page = st.navigation(pages())
    build_context()
    return page
