"""Showing a document report: the terminal, Markdown (Jupyter) and a self-contained HTML page.

The HTML page renders each step's math as SVG when the report is written
(matplotlib's mathtext: no script, no font or file fetched when the page is
viewed, and matplotlib is already handydl's plotting extra); a side that
mathtext cannot draw is shown as its LaTeX source.
"""
from __future__ import annotations

import html
import io
import re

MARK = {"correct": "✓ CORRECT", "wrong": "✗ WRONG", "not checked": "? NOT CHECKED"}


def _ce_text(ce):
    if not ce:
        return ""
    parts = []
    for k, v in ce.items():
        if k in ("left", "right", "values"):
            continue
        parts.append(f"{k} = {v}")
    vals = ce.get("values")
    if vals:
        parts.append("values " + ", ".join(f"{k} = {v}" for k, v in vals.items()))
    where = ", ".join(parts)
    if "left" not in ce:
        return where
    vals = f"left {ce.get('left'):.10g}, right {ce.get('right'):.10g}"
    return f"at {where}: {vals}" if where else vals


def _ref(step):
    return f"line {step.line}" + (f" ({step.label})" if step.label else "")


def _readable(tex):
    """The step as Unicode math (handydl.mathtext; the LaTeX itself without pylatexenc)."""
    from ..mathtext import to_unicode
    try:
        return " ".join(to_unicode(tex).split())
    except Exception:                    # a parser's failure must not hide the verdicts
        return " ".join(tex.split())


def render_text(report, color=False):
    """The terminal report: each equation with its label and line, each step's verdict,
    the first wrong step highlighted."""
    def paint(s, code):
        return f"\033[{code}m{s}\033[0m" if color else s
    lines = []
    if report.path:
        lines.append(f"{report.path}")
    if report.facts:
        lines.append("read from the document: " + "; ".join(report.facts))
    defs = [d for d in report.definitions]
    if defs:
        lines.append("definitions used: " + "; ".join(
            f"{_readable(d.text)} (line {d.line})" + ("" if d.body is not None else f" [NOT UNDERSTOOD: {d.why}]")
            for d in defs))
    if report.conditions:
        lines.append("read as conditions, not steps: " + "; ".join(_readable(c) for c in report.conditions))
    first = report.first_wrong
    for eq in report.equations:
        if not eq.steps:
            continue
        head = "equation" + (f" ({eq.label})" if eq.label else "") + f", line {eq.line}: {_readable(eq.text)}"
        lines.append("")
        lines.append(head)
        for st in eq.steps:
            mark = MARK[st.verdict]
            code = {"correct": "32", "wrong": "31;1", "not checked": "33"}[st.verdict]
            prefix = ">>" if st is first else "  "
            lines.append(f"{prefix} line {st.line}" + (f" ({st.label})" if st.label else "")
                         + f": {_readable(st.text)}")
            detail = st.how if st.verdict != "not checked" else st.why
            lines.append(f"     {paint(mark, code)}" + (f" ({detail})" if detail else ""))
            if st.counterexample:
                lines.append(f"     counterexample {_ce_text(st.counterexample)}")
            if st.hint:
                lines.append(f"     hint: {st.hint}")
            for n in st.notes:
                lines.append(f"     note: {n}")
    c = report.counts()
    total = sum(c.values())
    lines.append("")
    summary = (f"{total} steps: {c['correct']} correct, {c['wrong']} wrong, {c['not checked']} not checked")
    if first is not None:
        summary += f"; the first wrong step is at {_ref(first)}"
    lines.append(summary)
    return "\n".join(lines)


def render_markdown(report):
    """Markdown with $...$ math (Jupyter renders it)."""
    out = []
    if report.facts:
        out.append("*Read from the document:* " + "; ".join(report.facts))
    first = report.first_wrong
    for eq in report.equations:
        if not eq.steps:
            continue
        out.append(f"**Equation{' (' + eq.label + ')' if eq.label else ''}, line {eq.line}**")
        out.append("")
        for st in eq.steps:
            mark = {"correct": "✅ correct", "wrong": "❌ **WRONG**", "not checked": "❔ not checked"}[st.verdict]
            detail = st.how if st.verdict != "not checked" else st.why
            extra = ""
            if st.counterexample:
                extra += f"; counterexample {_ce_text(st.counterexample)}"
            if st.hint:
                extra += f"; *hint:* {st.hint}"
            star = " ⬅ first wrong step" if st is first else ""
            out.append(f"- line {st.line}: ${_md_math(st.text)}$ — {mark} ({detail}){extra}{star}")
        out.append("")
    c = report.counts()
    out.append(f"{sum(c.values())} steps: {c['correct']} correct, {c['wrong']} wrong, "
               f"{c['not checked']} not checked")
    return "\n".join(out)


def _md_math(tex):
    return tex.replace("$", r"\$").replace("\n", " ")


# -- HTML ---------------------------------------------------------------------------------

def _mathtext_source(tex):
    """LaTeX of a step rewritten into what matplotlib's mathtext draws."""
    s = " ".join(tex.split())
    s = re.sub(r"\\(dfrac|tfrac|cfrac)", r"\\frac", s)
    s = re.sub(r"\\(bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)\b", "", s)
    s = re.sub(r"\\left\.|\\right\.", "", s)
    s = s.replace(r"\lVert", r"\Vert").replace(r"\rVert", r"\Vert").replace(r"\|", r"\Vert ")
    s = re.sub(r"\\operatorname\{([^{}]*)\}", r"\\mathrm{\1}", s)
    s = re.sub(r"\\text\{([^{}]*)\}", lambda m: r"\mathrm{" + m.group(1).replace(" ", r"\ ") + "}", s)
    s = s.replace(r"\top", "T").replace(r"\intercal", "T").replace(r"\neq", r"\ne")
    s = s.replace(r"\coloneqq", ":=").replace(r"\qquad", r"\quad").replace("&", "")
    s = re.sub(r"\\mathbb\{R\}", r"\\mathbb{R}", s)
    s = re.sub(r"\\bm\{", r"\\mathbf{", s)
    s = re.sub(r"\\boldsymbol\{", r"\\mathbf{", s)
    return s


def _svg(tex):
    """The step as an inline SVG (None when mathtext cannot draw it)."""
    if r"\begin" in tex:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib import mathtext
        from matplotlib.font_manager import FontProperties
    except ImportError:
        return None
    buf = io.BytesIO()
    try:
        mathtext.math_to_image(f"${_mathtext_source(tex)}$", buf, format="svg",
                               prop=FontProperties(size=13))
    except Exception:                    # mathtext's parser raises ValueError and others
        return None
    svg = buf.getvalue().decode("utf-8")
    svg = svg[svg.find("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)   # no RDF, just the drawing


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
.eq { border: 1px solid #ddd; border-radius: 6px; margin: 1em 0; padding: .5em 1em; }
.eq h3 { font-size: 1em; margin: .3em 0; color: #555; }
.step { margin: .4em 0; padding: .3em .6em; border-left: 5px solid #bbb; }
.step.correct { border-color: #2a2; } .step.wrong { border-color: #d22; background: #fff2f2; }
.step.notchecked { border-color: #d90; background: #fffbea; }
.step.first { outline: 2px solid #d22; }
.verdict { font-weight: bold; } .correct .verdict { color: #2a2; } .wrong .verdict { color: #d22; }
.notchecked .verdict { color: #b70; }
.math svg { vertical-align: middle; max-width: 100%; height: auto; }
.tex { font-family: monospace; background: #f4f4f4; padding: 0 .3em; }
.detail { color: #444; font-size: .9em; margin-left: 1em; }
.summary { font-weight: bold; margin-top: 1.5em; }
"""


def render_html(report, standalone=True):
    """A report page that renders with nothing fetched: each step's math as inline SVG."""
    parts = []
    esc = html.escape
    if report.path:
        parts.append(f"<h1>{esc(report.path)}</h1>")
    if report.facts:
        parts.append("<p><b>Read from the document:</b> " + esc("; ".join(report.facts)) + "</p>")
    first = report.first_wrong
    for eq in report.equations:
        if not eq.steps:
            continue
        parts.append('<div class="eq">')
        parts.append(f"<h3>Equation{esc(' (' + eq.label + ')') if eq.label else ''}, line {eq.line}</h3>")
        for st in eq.steps:
            cls = st.verdict.replace(" ", "")
            svg = _svg(st.text)
            math = f'<span class="math">{svg}</span>' if svg else f'<span class="tex">{esc(st.text)}</span>'
            detail = st.how if st.verdict != "not checked" else st.why
            label = f" ({esc(st.label)})" if st.label else ""
            parts.append(f'<div class="step {cls}{" first" if st is first else ""}" data-line="{st.line}" '
                         f'data-verdict="{esc(st.verdict)}">')
            first_tag = ' <span class="verdict">⬅ the first wrong step</span>' if st is first else ""
            parts.append(f'<div>line {st.line}{label}: {math}{first_tag}</div>')
            parts.append(f'<div class="detail"><span class="verdict">{esc(st.verdict.upper())}</span>'
                         f'{" — " + esc(detail) if detail else ""}</div>')
            if st.counterexample:
                parts.append(f'<div class="detail">counterexample {esc(_ce_text(st.counterexample))}</div>')
            if st.hint:
                parts.append(f'<div class="detail">hint: {esc(st.hint)}</div>')
            for n in st.notes:
                parts.append(f'<div class="detail">note: {esc(n)}</div>')
            parts.append("</div>")
        parts.append("</div>")
    c = report.counts()
    parts.append(f'<p class="summary">{sum(c.values())} steps: {c["correct"]} correct, '
                 f'{c["wrong"]} wrong, {c["not checked"]} not checked</p>')
    body = "\n".join(parts)
    if not standalone:
        return f"<style>{_CSS}</style>\n{body}"
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>handydl verify report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
