"""Open ``torch.export`` programs (``.pt2``) without running anything the file brings.

A ``.pt2`` file is a zip archive. ``torch.export.load`` (torch 2.14) trusts it: it unpickles every
entry the archive's own configs flag for pickle (``use_pickle`` weights and constants, with
``weights_only=False``), custom and opaque objects, and the sample inputs (``weights_only=True`` first,
then *falling back to* ``weights_only=False``); and it hands every symbolic-shape expression string to
``sympy.sympify``, which evaluates Python. Any of these runs code chosen by whoever wrote the file.

:func:`load_program` therefore never gives torch the user's file. It reads the archive with
:mod:`zipfile`, checks every entry against what a plain exported CNN contains, and builds a new
in-memory archive that holds only the checked entries:

* the format markers (``archive_format``, ``archive_version``, ``byteorder``, ``.data/*``);
* ``models/<name>.json``, the serialised graph — JSON, in which every operator must be an ATen op
  (``torch.ops.aten.*``), a Python ``operator`` function or ``math`` function, and every shape
  expression must be a plain sympy expression (checked token by token: numbers, symbol names, sympy
  classes, assumption keywords, arithmetic and comparison operators — no attribute access, no
  subscripts, no string other than a symbol name);
* the weights and constants configs (JSON) — every entry must be a raw tensor (``use_pickle`` false,
  a ``weight_N`` / ``tensor_N`` payload);
* the raw tensor payloads those configs name (bytes reinterpreted as numbers, never unpickled).

Sample inputs are replaced by an empty entry (torch's loader then sets ``example_inputs = None``);
``extra/`` files are dropped (lrviz does not use them). Anything else — pickled payloads, custom
objects, AOTInductor binaries, the legacy format, unknown entries — is refused with an error that
names the entries. torch's own loggers and warnings are silenced while it reads the checked archive,
so a user sees lrviz's one-line message only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tokenize
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import LrvizError, short_cause

__all__ = ["Pt2Check", "check_archive", "load_program", "quiet_torch", "user_input_shape"]

#: Largest total uncompressed size accepted, relative to the archive's size on disk (zip bombs).
MAX_INFLATION = 4
#: Slack added to the inflation limit (bytes) so that tiny archives are not refused.
INFLATION_SLACK = 16 << 20

_FORMAT_ENTRIES = {"archive_format", "archive_version", "byteorder"}
_MODEL_RE = re.compile(r"^models/([A-Za-z_][\w]*)\.json$")
_WEIGHTS_CFG_RE = re.compile(r"^data/weights/([A-Za-z_][\w]*)_weights_config\.json$")
_CONSTANTS_CFG_RE = re.compile(r"^data/constants/([A-Za-z_][\w]*)_constants_config\.json$")
_SAMPLE_RE = re.compile(r"^data/sample_inputs/([A-Za-z_][\w]*)\.pt$")
_WEIGHT_PAYLOAD_RE = re.compile(r"^weight_\d+$")
_CONSTANT_PAYLOAD_RE = re.compile(r"^tensor_\d+$")
_TORCH_SAVE_MARKERS = ("data.pkl", "constants.pkl")
_SYMBOL_NAME_RE = re.compile(r"^[a-z]{1,8}\d+$")
_SYMBOL_STRING_RE = re.compile(r"^['\"][A-Za-z][A-Za-z0-9_]{0,63}['\"]$")
#: Operator tokens a shape expression may use (no ``.``, ``[``, ``{``, ``:``, ``;``, ``@``, ``lambda``).
_ALLOWED_OPS = {"(", ")", ",", "=", "+", "-", "*", "/", "//", "%", "**", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
_ALLOWED_TARGET_PREFIXES = ("torch.ops.aten.", "_operator.", "math.")
#: Symbolic-shape helpers torch's deserializer offers beside the ATen ops (``torch.sym_*``).
_SYM_TARGET_RE = re.compile(r"^torch\.sym_[a-z_]+$")


@dataclass(frozen=True)
class Pt2Check:
    """What :func:`check_archive` found in a ``.pt2`` archive.

    Attributes
    ----------
    prefix : str
        The archive's top folder (every entry lives under ``prefix/``).
    models : tuple of str
        Names of the programs in the archive (``models/<name>.json``).
    kept : dict of str to bytes
        Entry name (without the prefix) → content, for every entry that goes into the checked
        archive (sample inputs already replaced by empty bytes).
    dropped : tuple of str
        Entries left out on purpose (sample inputs, ``extra/`` files).
    """

    prefix: str
    models: tuple[str, ...]
    kept: dict[str, bytes] = field(repr=False)
    dropped: tuple[str, ...] = ()


def _refuse(path: str, what: str) -> LrvizError:
    """The refusal of ``path``: what was found, and how to write a file lrviz opens (:data:`_REEXPORT`)."""
    return LrvizError(f"refused to open {path!r} as an exported program: {what}; {_REEXPORT}")


_REEXPORT = (
    "lrviz opens only plain torch.export programs whose weights are raw tensors (what "
    "torch.export.save writes for an ordinary nn.Module); re-export the model with "
    "torch.export.save(torch.export.export(model, (x,)), FILE)"
)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's export/serialisation loggers and Python warnings for the duration.

    ``torch.export.load`` logs warnings (some with a traceback) on odd input; lrviz reports its own
    one-line error instead. Logger levels are restored afterwards.
    """
    names = ("torch.export", "torch._export", "torch._export.serde.serialize", "torch.export.pt2_archive._package")
    saved = {}
    for name in names:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _sympy_names() -> frozenset[str]:
    """Names a shape expression may call: sympy classes, torch's sympy functions, assumption keys."""
    import sympy
    from sympy.core.assumptions import _assume_defined
    from torch.utils._sympy import functions as tfun

    names: set[str] = {"True", "False", "oo", "zoo", "nan", "int_oo", "I", "pi", "E"}
    for module in (sympy, tfun):
        for name in dir(module):
            obj = getattr(module, name, None)
            if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, sympy.Basic):
                names.add(name)
    names.update(_assume_defined)
    return frozenset(names)


_SYMPY_NAMES: frozenset[str] | None = None


def _check_expr(expr: str) -> str | None:
    """Return why ``expr`` is not a plain sympy expression, or None when it is.

    Token by token: numbers, the names of sympy classes / torch sympy functions / assumption keys /
    ``True``/``False``, bare symbol names (``s0``), string literals that are a symbol name
    (``Symbol('s31', positive=True)``) and arithmetic/comparison operators. No attribute access,
    subscripts, lambdas or other strings — nothing that can reach Python beyond sympy constructors.
    """
    global _SYMPY_NAMES
    if _SYMPY_NAMES is None:
        _SYMPY_NAMES = _sympy_names()
    if len(expr) > 10_000:
        return "expression longer than 10,000 characters"
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        return f"not an expression ({exc})"
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NUMBER:
            continue
        if tok.type == tokenize.NAME:
            if tok.string in _SYMPY_NAMES or _SYMBOL_NAME_RE.match(tok.string):
                continue
            return f"name {tok.string!r} is not a sympy function or symbol"
        if tok.type == tokenize.STRING:
            if _SYMBOL_STRING_RE.match(tok.string):
                continue
            return f"string {tok.string[:40]!r} is not a symbol name"
        if tok.type == tokenize.OP and tok.string in _ALLOWED_OPS:
            continue
        return f"token {tok.string[:40]!r} is not allowed in a shape expression"
    return None


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for every scalar in a JSON document (key = the enclosing dict key)."""
    stack = [(key, obj)]
    while stack:
        k, o = stack.pop()
        if isinstance(o, dict):
            stack.extend((str(kk), vv) for kk, vv in o.items())
        elif isinstance(o, list):
            stack.extend((k, vv) for vv in o)
        else:
            yield k, o


def _check_program_json(path: str, entry: str, data: bytes) -> None:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"{entry} is not valid JSON ({exc})") from None
    for key, value in _walk(doc):
        if key == "expr_str" and isinstance(value, str):
            why = _check_expr(value)
            if why is not None:
                raise _refuse(
                    path,
                    f"{entry} holds a shape expression that is not plain sympy ({why}): {value[:80]!r}",
                )
        elif key == "target" and isinstance(value, str):
            if not (value.startswith(_ALLOWED_TARGET_PREFIXES) or _SYM_TARGET_RE.match(value)):
                raise _refuse(
                    path,
                    f"{entry} calls {value[:80]!r}, which is not an ATen operator (only torch.ops.aten.*, "
                    "operator.* and math.* are accepted: no custom ops, higher-order ops or Python callables)",
                )


def _check_payload_config(path: str, entry: str, data: bytes, payload_re: re.Pattern[str]) -> set[str]:
    """Validate a weights/constants config; return the payload file names it references."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"{entry} is not valid JSON ({exc})") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise _refuse(path, f"{entry} has no 'config' mapping")
    names: set[str] = set()
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            raise _refuse(path, f"{entry}: entry {str(fqn)[:60]!r} is not a mapping")
        if meta.get("use_pickle") is not False:
            raise _refuse(
                path,
                f"{entry}: {str(fqn)[:60]!r} is stored as a pickle (use_pickle={meta.get('use_pickle')!r}); "
                "opening it would run whatever code the pickle holds",
            )
        name = meta.get("path_name")
        if not isinstance(name, str) or not payload_re.match(name):
            raise _refuse(
                path,
                f"{entry}: {str(fqn)[:60]!r} points at {str(name)[:60]!r}, which is not a raw tensor payload "
                "(custom or opaque objects are unpickled when loaded)",
            )
        if not isinstance(meta.get("tensor_meta"), dict):
            raise _refuse(path, f"{entry}: {str(fqn)[:60]!r} has no tensor metadata")
        names.add(name)
    return names


def _open_zip(file: Path, p: str) -> zipfile.ZipFile:
    """Step 1: the file exists, is not empty and is a zip archive."""
    if not file.is_file():
        raise LrvizError(
            f"exported program {p!r} does not exist; check the path (a .pt2 file written by torch.export.save)"
        )
    if file.stat().st_size == 0:
        raise LrvizError(f"{p!r} is empty (0 bytes); a .pt2 file is written by torch.export.save")
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise LrvizError(
            f"{p!r} is not a torch.export program (it is not a zip archive: truncated, or another kind of file); a .pt2 file is written by "
            "torch.export.save(torch.export.export(model, (x,)), FILE)"
        ) from None


def _list_entries(zf: zipfile.ZipFile, p: str, size: int) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """Step 2: the archive's top folder and its files by name below it; refuses zip bombs, archives
    without one top folder and unsafe paths."""
    infos = zf.infolist()
    if not infos:
        raise _refuse(p, "the archive is empty")
    total = sum(i.file_size for i in infos)
    if total > MAX_INFLATION * size + INFLATION_SLACK:
        raise _refuse(p, f"it inflates to {total / 2**20:.0f} MiB from {size / 2**20:.1f} MiB (a zip bomb?)")
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1 or any("/" not in i.filename for i in infos):
        raise _refuse(p, "its entries do not share one top folder")
    rel: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1]
        if info.is_dir():
            continue
        if name.startswith("/") or ".." in name.split("/") or "\\" in name:
            raise _refuse(p, f"entry {info.filename[:80]!r} has an unsafe path")
        rel[name] = info
    return prefixes.pop(), rel


def _check_format(rel: dict[str, zipfile.ZipInfo], read, p: str) -> None:
    """Step 3: a ``pt2`` archive, not a ``torch.save`` pickle renamed to ``.pt2`` nor the legacy format."""
    if any(name in rel for name in _TORCH_SAVE_MARKERS):
        raise LrvizError(
            f"{p!r} is a torch.save file (a pickle), not a torch.export program; if it is a state_dict, "
            "load it as the weights of its architecture (command line: --weights FILE; dashboard: "
            "'upload a state_dict'; read with weights_only=True); lrviz never unpickles a .pt2"
        )
    if rel.get("archive_format") is None:
        legacy = "serialized_exported_program.json" in rel
        what = "it is in the legacy torch.export format, which stores pickles" if legacy else "it has no archive_format entry"
        raise _refuse(p, what)
    fmt = read("archive_format").decode("utf-8", "replace").strip()
    if fmt != "pt2":
        raise _refuse(p, f"archive_format is {fmt[:20]!r}, not 'pt2'")


@dataclass
class _Entries:
    """What :func:`_classify` sorted the archive's entries into."""

    kept: dict[str, bytes] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    #: payload file names each config folder's configs name
    refs: dict[str, set[str]] = field(default_factory=lambda: {"data/weights/": set(), "data/constants/": set()})
    #: payload entry -> its folder, checked against ``refs`` once every config is read
    payloads: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def _classify(rel: dict[str, zipfile.ZipInfo], read, p: str) -> _Entries:
    """Step 4: sort every entry; the graph JSON and the weights/constants configs are checked as they are read."""
    found = _Entries()
    for name in sorted(rel):
        if name in _FORMAT_ENTRIES or name.startswith(".data/"):
            found.kept[name] = read(name)
        elif m := _MODEL_RE.match(name):
            data = read(name)
            _check_program_json(p, name, data)
            found.kept[name] = data
            found.models.append(m.group(1))
        elif _WEIGHTS_CFG_RE.match(name):
            data = read(name)
            found.refs["data/weights/"] |= _check_payload_config(p, name, data, _WEIGHT_PAYLOAD_RE)
            found.kept[name] = data
        elif _CONSTANTS_CFG_RE.match(name):
            data = read(name)
            found.refs["data/constants/"] |= _check_payload_config(p, name, data, _CONSTANT_PAYLOAD_RE)
            found.kept[name] = data
        elif _SAMPLE_RE.match(name):
            found.kept[name] = b""  # torch's loader reads an empty entry as "no example inputs"
            found.dropped.append(name)
        elif name.startswith("extra/"):
            found.dropped.append(name)
        elif name.startswith("data/weights/") or name.startswith("data/constants/"):
            found.payloads[name] = name.rpartition("/")[0] + "/"
        else:
            found.unknown.append(name)
    return found


def _check_payloads(found: _Entries, read, p: str) -> None:
    """Step 5: nothing unknown, at least one program, every payload a raw tensor a config names
    (then read), every program with its configs, every named payload present."""
    if found.unknown:
        unknown = found.unknown
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise _refuse(p, f"it holds entries lrviz does not open ({shown})")
    if not found.models:
        raise _refuse(p, "it holds no program (models/<name>.json)")
    for name, folder in found.payloads.items():
        if name[len(folder):] not in found.refs[folder]:
            raise _refuse(p, f"entry {name!r} is not a raw tensor named by the archive's configs")
        found.kept[name] = read(name)
    for model in found.models:
        for needed in (f"data/weights/{model}_weights_config.json", f"data/constants/{model}_constants_config.json"):
            if needed not in found.kept:
                raise _refuse(p, f"program {model!r} has no {needed}")
        found.kept.setdefault(f"data/sample_inputs/{model}.pt", b"")
    for folder, names in found.refs.items():
        missing = sorted(n for n in names if folder + n not in found.kept)
        if missing:
            raise LrvizError(f"{p!r} is damaged: its configs name payloads that are missing ({missing[:5]})")


def check_archive(path: str | Path) -> Pt2Check:
    """Inspect a ``.pt2`` archive without loading it, and return the entries that are safe to load.

    Open the zip (step 1), list its entries (2), check its format (3), sort and check every entry (4),
    then the payloads and their configs against each other (5).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.pt2`` file.

    Returns
    -------
    Pt2Check

    Raises
    ------
    LrvizError
        If the file is missing, not a zip archive, a ``torch.save`` file renamed to ``.pt2``, in the
        legacy export format, or holds any entry that torch would unpickle or evaluate (pickled
        weights or constants, custom objects, non-ATen operators, non-sympy shape expressions,
        AOTInductor binaries) or that lrviz does not know.
    """
    p = str(path)
    file = Path(path)
    with _open_zip(file, p) as zf:
        prefix, rel = _list_entries(zf, p, file.stat().st_size)

        def read(name: str) -> bytes:
            try:
                return zf.read(rel[name])
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise LrvizError(f"{p!r} is damaged: entry {name!r} cannot be read ({exc})") from None

        _check_format(rel, read, p)
        found = _classify(rel, read, p)
        _check_payloads(found, read, p)
    return Pt2Check(prefix=prefix, models=tuple(found.models), kept=found.kept, dropped=tuple(found.dropped))


def user_input_shape(program: torch.export.ExportedProgram) -> list[Any]:
    """Shape of a program's first user input, as recorded when it was exported; ``[]`` when unknown.

    Static dimensions are ints; dynamic ones (e.g. a ``torch.export.Dim`` batch) are symbolic.
    """
    user_inputs = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if user_inputs and node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            return list(val.shape) if val is not None and hasattr(val, "shape") else []
    return []


def _rebuild(check: Pt2Check) -> io.BytesIO:
    """Write the checked entries into a fresh in-memory zip (stored, same top folder)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as out:
        for name, data in check.kept.items():
            out.writestr(f"{check.prefix}/{name}", data)
    buf.seek(0)
    return buf


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` program from the checked copy of its archive (see the module docstring).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    torch.export.ExportedProgram

    Raises
    ------
    LrvizError
        If :func:`check_archive` refuses the file, the archive holds more than one program, or torch
        cannot deserialise the checked copy.
    """
    check = check_archive(path)
    if len(check.models) != 1:
        raise LrvizError(
            f"{str(path)!r} holds {len(check.models)} programs ({', '.join(check.models)}); lrviz opens an "
            "archive with one program, as torch.export.save writes it"
        )
    buf = _rebuild(check)
    try:
        with quiet_torch():
            return torch.export.load(buf)
    except LrvizError:
        raise
    except Exception as exc:  # torch raises many types on a malformed graph; the user needs one line
        raise LrvizError(
            f"could not read {str(path)!r} as an exported program ({short_cause(exc)}); a .pt2 "
            "file must be written by torch.export.save(torch.export.export(model, ...), FILE)"
        ) from None
