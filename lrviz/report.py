"""A self-contained HTML report of a compression result (works offline: plotly.js is embedded once).

Used by the dashboard's Present page; usable on its own::

    html = build_report("ResNet-20 on Fashion-MNIST", headline_rows, figures=[("Per-layer params", fig)])
    Path("report.html").write_text(html, encoding="utf-8")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["build_report", "png_data_uri"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-bottom:20px}
.cards{display:flex;flex-wrap:wrap;gap:14px;margin:18px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:10px;padding:12px 16px;min-width:180px;flex:1}
.card .k{color:#666;font-size:13px}.card .v{font-size:22px;font-weight:600;margin-top:4px}
.card .d{font-size:13px;color:#2a7a2a;margin-top:2px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #e3e3e3;padding:4px 8px;text-align:right} th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
.fig{background:#fff;border:1px solid #e3e3e3;border-radius:10px;padding:6px;margin:12px 0}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{margin:0;background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:6px;text-align:center;font-size:12px;width:130px}
.imgs img{width:112px;height:112px;image-rendering:pixelated}
.note{color:#555;font-size:13px}
footer{margin-top:40px;color:#888;font-size:12px}
"""


def png_data_uri(image: np.ndarray) -> str:
    """``uint8`` image (``H×W`` or ``H×W×3``) as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _cards(rows: Sequence[Mapping[str, Any]]) -> str:
    out = ['<div class="cards">']
    for r in rows:
        delta = f'<div class="d">{_esc(r["delta"])}</div>' if r.get("delta") else ""
        out.append(
            f'<div class="card"><div class="k">{_esc(r["label"])}</div>'
            f'<div class="v">{_esc(r["value"])}</div>{delta}</div>'
        )
    out.append("</div>")
    return "".join(out)


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="–", float_format=lambda v: f"{v:.4g}")


def build_report(
    title: str,
    cards: Sequence[Mapping[str, Any]],
    *,
    subtitle: str = "",
    figures: Sequence[tuple[str, Any]] = (),
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    images: Sequence[tuple[np.ndarray, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """Build the report as one HTML string.

    Parameters
    ----------
    title, subtitle : str
    cards : sequence of mappings
        Headline numbers: ``{"label", "value", "delta" (optional)}``.
    figures : sequence of (title, plotly Figure)
        Embedded interactively; plotly.js is included inline once (no network needed).
    tables : sequence of (title, DataFrame)
    images : sequence of (uint8 image, caption)
        Sample predictions.
    notes : sequence of str
        Methodology notes (units, what the numbers are based on).
    """
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f"<div class='sub'>{_esc(subtitle)}</div>" if subtitle else "",
        _cards(cards),
    ]
    first = True
    if figures:
        parts.append("<h2>Plots</h2>")
    for fig_title, fig in figures:
        fig = type(fig)(fig).update_layout(template="plotly_white")  # a copy: the caller's figure is unchanged
        div = fig.to_html(full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})
        first = False
        parts.append(f"<div class='fig'><h3>{_esc(fig_title)}</h3>{div}</div>")
    if images:
        parts.append("<h2>Sample predictions</h2><div class='imgs'>")
        for img, caption in images:
            parts.append(f"<figure><img alt='{_esc(caption)}' src='{png_data_uri(img)}'><figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    for t_title, df in tables:
        parts.append(f"<h2>{_esc(t_title)}</h2>{_table(df)}")
    if notes:
        parts.append("<h2>Notes</h2><ul class='note'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>Generated by lrviz on {stamp}.</footer></main></body></html>")
    return "".join(parts)
