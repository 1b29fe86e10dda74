"""The dashboard with hostile and broken uploads: an ``st.error``, nothing runs, the app keeps working.

Driven headlessly with ``streamlit.testing.v1.AppTest`` on the demo model (see test_app.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
pytest.importorskip("streamlit")
pytest.importorskip("plotly")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"


class _Touch:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def new_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    return ok(at.run())


def errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.error)


def _hostile_pt2(tmp_path: Path, marker: Path) -> bytes:
    from lrviz import sources
    from lrviz.export import save_program

    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    clean = save_program(loaded.module, loaded.input_size, tmp_path / "demo.pt2")
    with zipfile.ZipFile(clean) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    pre = next(iter(entries)).split("/", 1)[0]
    cfg_name = f"{pre}/data/weights/model_weights_config.json"
    cfg = json.loads(entries[cfg_name])
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    entries[cfg_name] = json.dumps(cfg).encode()
    entries[f"{pre}/data/weights/{cfg['config'][first]['path_name']}"] = pickle.dumps(_Touch(marker))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_hostile_program_upload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned-app-pt2"
    at = new_app()
    at.radio(key="model_kind").set_value("program")
    ok(at.run())
    at.file_uploader(key="pt2_upload").set_value(("evil.pt2", _hostile_pt2(tmp_path, marker), "application/octet-stream"))
    ok(at.run())
    assert "pickle" in errors(at), errors(at)
    assert not marker.exists()
    at.radio(key="model_kind").set_value("builtin")  # the app keeps working
    ok(at.run())
    assert not at.error and at.metric


@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_hostile_state_dict_upload_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / f"pwned-app-sd-{kind}"
    if kind == "pickle":
        data = pickle.dumps({"conv.weight": _Touch(marker)})
    else:
        buf = io.BytesIO()
        torch.save({"conv.weight": _Touch(marker)}, buf)
        data = buf.getvalue()
    at = new_app()
    at.radio(key="builtin_weights").set_value("upload")
    ok(at.run())
    at.file_uploader(key="sd_upload_builtin").set_value(("evil.pt", data, "application/octet-stream"))
    ok(at.run())
    assert errors(at), "a hostile state_dict must give an error"
    assert not marker.exists()
    at.radio(key="builtin_weights").set_value("default")
    ok(at.run())
    assert not at.error and at.metric


def test_imagefolder_of_non_images_gives_an_error(tmp_path):
    root = tmp_path / "folder"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "notes.png").write_text("this is not a PNG\n")
    at = new_app()
    at.radio(key="data_kind").set_value("imagefolder")
    ok(at.run())
    at.text_input(key="imagefolder_path").set_value(str(root))
    ok(at.run())
    assert errors(at), "a folder of broken images must give an error"
    at.text_input(key="imagefolder_path").set_value(str(tmp_path / "missing"))
    ok(at.run())
    assert errors(at)


def _truncated_state_dict() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64, 64)}, buf)
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind, filename, data", [
    ("state_dict", "bad-pickle.pt", b"\x80\x02e."),  # torch.load fails inside the unpickler: "IndexError: pop from empty list"
    ("state_dict", "truncated.pt", _truncated_state_dict()),  # miniz: "failed finding central directory"
    ("program", "garbage.pt2", b"PK\x03\x04" + bytes(range(256)) * 4),
])
def test_a_bad_upload_gives_one_clear_error(kind, filename, data):
    at = new_app()
    if kind == "program":
        at.radio(key="model_kind").set_value("program")
        ok(at.run())
        at.file_uploader(key="pt2_upload").set_value((filename, data, "application/octet-stream"))
    else:
        at.radio(key="builtin_weights").set_value("upload")
        ok(at.run())
        at.file_uploader(key="sd_upload_builtin").set_value((filename, data, "application/octet-stream"))
    ok(at.run())
    shown = [e.value for e in at.error]
    assert len(shown) == 1, shown  # once, on the page (not again in the sidebar)
    (msg,) = shown
    assert filename in msg and msg.count("\n") == 0, msg
    for internal in ("IndexError", "RuntimeError", "pop from empty list", "miniz", "Traceback"):
        assert internal not in msg, msg
