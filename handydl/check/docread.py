r"""Finding the math of a derivation document: blocks, rows, labels, chains, prose facts.

Markdown, LaTeX or plain text; displayed math in ``$$...$$``, ``\[...\]``,
``\begin{align|align*|aligned|equation|eqnarray|gather|multline}``, inline math
in ``$...$`` and ``\(...\)``.  Rows are split at ``\\`` (outside cases and
matrices), ``&`` is alignment, a row that starts with ``=`` continues the chain
of the row before, labels come from ``\tag{..}``, ``\label{..}`` or a trailing
``(N)``.  Every position is kept as an offset into the original text, so that
each relation (each step) knows the 1-based line it stands on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ENVIRONMENTS = ("align", "align*", "aligned", "equation", "equation*", "eqnarray", "eqnarray*",
                "gather", "gather*", "multline", "multline*", "split", "alignat", "alignat*",
                "flalign", "flalign*", "displaymath", "math")


@dataclass
class Side:
    text: str
    offset: int               # in the document


@dataclass
class Chain:
    """A = B = C ...: sides and the relations between them (with their offsets)."""
    sides: list
    relations: list           # (op, offset) between side k-1 and k
    labels: list              # the label of each relation's row (or the block's)
    display: bool
    block: int                # which math block
    prose: str = ""           # the prose just before the block


@dataclass
class Block:
    body: str
    offset: int
    display: bool
    label: str | None = None
    prose: str = ""
    env: str = ""             # align, equation, ... ('' for $$ and \[)


@dataclass
class Reading:
    text: str
    blocks: list
    chains: list
    prose: str                # the text outside math (for definitions said in words)
    inline: list = field(default_factory=list)   # inline blocks

    def line(self, offset):
        return self.text.count("\n", 0, offset) + 1


def _blank(text, pattern, flags=0):
    """Replace every match by spaces (newlines kept), so offsets stay valid."""
    return re.sub(pattern, lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=flags)


def _mask_code(text):
    text = _blank(text, r"^```.*?^```[^\n]*$", re.S | re.M)
    text = _blank(text, r"^~~~.*?^~~~[^\n]*$", re.S | re.M)
    text = _blank(text, r"`[^`\n]+`")
    text = _blank(text, r"(?<!\\)%[^\n]*")                 # LaTeX comments
    text = _blank(text, r"<!--.*?-->", re.S)
    return text


_OPEN = re.compile(r"\$\$|\\\[|\\\(|\\begin\{(" + "|".join(re.escape(e) for e in ENVIRONMENTS)
                   + r")\}|(?<![\\$])\$(?!\$)")


def find_blocks(text):
    """Math blocks, in order; prose between them is kept with each block."""
    masked = _mask_code(text)
    blocks, pos, last_end = [], 0, 0
    while True:
        m = _OPEN.search(masked, pos)
        if not m:
            break
        tok = m.group(0)
        if tok == "$$":
            close = masked.find("$$", m.end())
            display, start = True, m.end()
        elif tok == r"\[":
            close = masked.find(r"\]", m.end())
            display, start = True, m.end()
        elif tok == r"\(":
            close = masked.find(r"\)", m.end())
            display, start = False, m.end()
        elif tok == "$":
            close = _inline_close(masked, m.end())
            display, start = False, m.end()
        else:
            env = m.group(1)
            close = _env_close(masked, env, m.end())
            display, start = True, m.end()
        if close < 0:
            pos = m.end()
            continue
        body = masked[start:close]
        end = close + (2 if tok in ("$$", r"\[", r"\(") else 1 if tok == "$"
                       else len(r"\end{%s}" % m.group(1)))
        label = None
        if display:                          # $$ ... $$ (3): a label after the block
            tail = re.match(r"[ \t]*(?:\\q?quad)?[ \t]*\((\d+[a-z]?)\)", masked[end:])
            if tail:
                label = tail.group(1)
                end += tail.end()
        env = m.group(1) or ""
        blocks.append(Block(body, start, display, label, masked[last_end:m.start()], env))
        last_end = pos = end
    prose = masked
    for b in blocks:
        prose = prose[:b.offset] + re.sub(r"[^\n]", " ", b.body) + prose[b.offset + len(b.body):]
    return blocks, prose, masked[last_end:]


def _inline_close(text, start):
    j = start
    while True:
        k = text.find("$", j)
        if k < 0 or "\n\n" in text[start:k]:
            return -1
        if text[k - 1] != "\\":
            return k
        j = k + 1


def _env_close(text, env, start):
    m = re.compile(r"\\end\{" + re.escape(env) + r"\}").search(text, start)
    return m.start() if m else -1


_INNER = re.compile(r"\\(begin|end)\{(aligned|split|gathered|alignedat|equation\*?|align\*?)\}(\{\d+\})?")
_LABEL = re.compile(r"\\tag\*?\{([^{}]*)\}|\\label\{([^{}]*)\}")
_TRAIL = re.compile(r"(?:\\q?quad|\\,|\\;|~|\s)+(?:\\text\{\s*)?\(\s*(\d+[a-z]?|\d+\.\d+)\s*\)(?:\s*\})?\s*[,.;]?\s*$")
_COMMENT = re.compile(r"(?:\\q?quad|\\,|\\;|\\hspace\{[^}]*\}|~|\s)*(?:\\text|\\mathrm|\\textrm|\\mbox)"
                      r"\{[^{}]*\}\s*[,.;]?\s*$")
_SEPARATORS = re.compile(r"\\Rightarrow|\\Longrightarrow|\\implies|\\iff|\\Leftrightarrow|"
                         r"\\quad\s*\\text\{\s*(?:and|so|thus|hence)\s*\}\s*\\quad")


def split_rows(body, offset):
    """[(row text with offset)] at top-level \\\\ ; inner aligned/split wrappers blanked."""
    body = _INNER.sub(lambda m: " " * len(m.group(0)), body)
    rows, depth, brace, start, i = [], 0, 0, 0, 0
    while i < len(body):
        if body.startswith(r"\begin{", i):
            depth += 1
        elif body.startswith(r"\end{", i):
            depth -= 1
        elif body[i] == "{" and (i == 0 or body[i - 1] != "\\"):
            brace += 1
        elif body[i] == "}" and (i == 0 or body[i - 1] != "\\"):
            brace -= 1
        elif body.startswith(r"\\", i) and depth == 0 and brace == 0:
            rows.append((body[start:i], offset + start))
            i += 2
            while i < len(body) and body[i] == "[":          # \\[4pt]
                close = body.find("]", i)
                if close < 0:
                    break
                i = close + 1
            start = i
            continue
        elif body[i] == "\\":
            i += 2
            continue
        i += 1
    rows.append((body[start:], offset + start))
    return [(t, o) for t, o in rows if t.strip()]


_CONDITION = re.compile(r"(?:,\s*(?:\\q?quad|\\,|\\;|~|\s)*|(?:\\q?quad|\\,|\\;|~)+\s*)"
                        r"(?:\\text\{[^{}]*\}\s*)?(?:for\s+|if\s+)?[A-Za-z](?:_\{?\w+\}?)?\s*"
                        r"(?:\\neq|\\ne|\\geq|\\leq|\\ge|\\le|\\in|>|<)[^=]*$")


def clean_row(text):
    """(text without label or trailing comment, label or None), same length (blanked)."""
    label = None
    for m in _LABEL.finditer(text):
        label = label or (m.group(1) if m.group(1) is not None else None)
        if m.group(2) is not None and label is None:
            label = m.group(2)
    text = _LABEL.sub(lambda m: " " * len(m.group(0)), text)
    changed = True
    while changed:
        changed = False
        m = _TRAIL.search(text)
        if m and _outside_braces(text, m.start()):
            label = label or m.group(1)
            text = text[:m.start()] + " " * (len(text) - m.start())
            changed = True
        m = _COMMENT.search(text)
        if m and _outside_braces(text, m.start()) and not re.search(r"\\begin\{cases\}", text[m.start():]) \
                and "\\end{cases}" not in text[m.start():] and _has_relation(text[:m.start()]):
            text = text[:m.start()] + " " * (len(text) - m.start())
            changed = True
    m = _CONDITION.search(text)                      # "= -1/x^2, \quad x \neq 0": where it holds
    if m and _outside_braces(text, m.start()):
        text = text[:m.start()] + " " * (len(text) - m.start())
    m = re.search(r"[,.;]\s*$", text)
    if m:
        text = text[:m.start()] + " " * (len(text) - m.start())
    text = re.sub(r"\\(nonumber|notag)", lambda m: " " * len(m.group(0)), text)
    return text, label


def _outside_braces(text, pos):
    depth = 0
    for i, ch in enumerate(text[:pos]):
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
    return depth == 0 and text[:pos].count(r"\begin{") == text[:pos].count(r"\end{")


def _has_relation(text):
    return bool(split_relations(text, 0)[1])


_REL = re.compile(r"\\approx|\\coloneqq|\\equiv|:=|\\neq|\\ne(?![a-zA-Z])|\\leq|\\geq|\\le(?![a-zA-Z])|"
                  r"\\ge(?![a-zA-Z])|\\sim|\\propto|<|>|=")


def split_relations(text, offset):
    """Sides and relations at top level (not inside braces, brackets, parentheses or
    environments).  Returns ([Side], [(op, offset)])."""
    sides, rels, depth, env, start, i = [], [], 0, 0, 0, 0
    while i < len(text):
        ch = text[i]
        if text.startswith(r"\begin{", i):
            env += 1
        elif text.startswith(r"\end{", i):
            env -= 1
        elif ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}()[]|":
            i += 2
            continue
        elif ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif depth == 0 and env == 0:
            m = _REL.match(text, i)
            if m and not (ch == "\\" and text[i - 1:i] == "\\"):
                op = m.group(0)
                sides.append(Side(text[start:i], offset + start))
                rels.append((_rel_name(op), offset + i))
                i = m.end()
                start = i
                continue
        if ch == "\\":
            m = re.match(r"\\[A-Za-z]+", text[i:])
            if m:
                i += len(m.group(0))
                continue
        i += 1
    sides.append(Side(text[start:], offset + start))
    return sides, rels


def _rel_name(op):
    return {"=": "=", r"\approx": "≈", r"\coloneqq": ":=", ":=": ":=", r"\equiv": ":=",
            r"\neq": "≠", r"\ne": "≠", r"\leq": "≤", r"\le": "≤", r"\geq": "≥", r"\ge": "≥",
            "<": "<", ">": ">", r"\sim": "~", r"\propto": "∝"}[op]


def chains_of_block(block, index):
    """The chains of one block: rows that start with a relation continue the chain above,
    rows that start with + or - continue its last side."""
    rows = split_rows(block.body, block.offset) if block.display else [(block.body, block.offset)]
    chains, labels = [], []
    for text, off in rows:
        text, label = clean_row(text) if block.display else (text, None)
        labels.append(label)
        text = _no_alignment(text)
        for part, poff in _separate(text, off):
            sides, rels = split_relations(part, poff)
            first_empty = not sides[0].text.strip()
            if first_empty and rels and chains and chains[-1].block == index:
                ch = chains[-1]
                ch.sides.extend(sides[1:])
                ch.relations.extend(rels)
                ch.labels.extend([label] * len(rels))
            elif not rels and chains and chains[-1].block == index and re.match(r"\s*[-+]", part):
                last = ch = chains[-1]
                last.sides[-1] = Side(last.sides[-1].text + " " + part, last.sides[-1].offset)
                if label and not ch.labels[-1]:
                    ch.labels[-1] = label
            else:
                chains.append(Chain(sides, rels, [label] * len(rels), block.display, index, block.prose))
    if block.label:
        for ch in chains:
            if ch.block == index:
                ch.labels = [lab or block.label for lab in ch.labels]
    distinct = {lab for lab in labels if lab}
    numbered_rows = block.env.rstrip("*") in ("align", "eqnarray", "gather", "flalign", "alignat")
    if len(distinct) == 1 and not numbered_rows:   # one \tag for a multi-row equation
        only = distinct.pop()
        for ch in chains:
            ch.labels = [lab or only for lab in ch.labels]
    return chains


def _no_alignment(text):
    """& blanked outside environments (cases keep theirs)."""
    out, env, i = list(text), 0, 0
    while i < len(text):
        if text.startswith(r"\begin{", i):
            env += 1
        elif text.startswith(r"\end{", i):
            env -= 1
        elif text[i] == "&" and env == 0 and text[i - 1:i] != "\\":
            out[i] = " "
        i += 1
    return "".join(out)


def _separate(text, offset):
    """A row holding two equations joined by \\Rightarrow, \\implies or '\\quad and \\quad'."""
    out, start = [], 0
    for m in _SEPARATORS.finditer(text):
        if _outside_braces(text, m.start()):
            out.append((text[start:m.start()], offset + start))
            start = m.end()
    out.append((text[start:], offset + start))
    return [(t, o) for t, o in out if t.strip()]


def read(text):
    """Read a document: its blocks, its chains and its prose."""
    blocks, prose, _ = find_blocks(text)
    chains = []
    for k, b in enumerate(blocks):
        if not b.body.strip():
            continue
        chains.extend(chains_of_block(b, k))
    return Reading(text, blocks, chains, prose, [b for b in blocks if not b.display])
