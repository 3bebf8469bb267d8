"""Writers of :class:`~reports.columns.Table`: Markdown, LaTeX (booktabs), an HTML fragment and CSV.

The display text and bold cells are already in the table; the CSV is written from the records behind
the rows, through :data:`reports.columns.COLUMNS`, so a column's CSV name lives with its header. A
table's legend (what a column counts) is a footnote of the LaTeX and HTML documents only: Markdown is
also what ``bench run`` prints, where it would repeat under every table.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import pandas as pd

from reports.columns import COLUMNS, CSV_FIELDS, Table

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"\textsuperscript{\dag}",
    "‡": r"\textsuperscript{\ddag}",
    "§": r"\textsuperscript{\S}",
}


def render(tables: list[Table], fmt: str) -> str:
    """All tables in one document of format md, latex, csv or html (a fragment)."""
    if fmt == "csv":
        return _csv(tables)
    renderer = {"md": _markdown, "latex": _latex, "html": _html}[fmt]
    return "\n\n".join(renderer(t) for t in tables) + "\n"


def _cell(table: Table, i: int, column: str, bold: Callable[[str], str], escape: Callable[[str], str] = str) -> str:
    """Cell text escaped for the format, wrapped by ``bold`` where it is the best of its column."""
    text = escape(table.rows[i][column])
    return bold(text) if (i, column) in table.bold else text


def _markdown_head(columns: Sequence[str]) -> list[str]:
    """The header and alignment rule of a Markdown table: the method column left, numbers right."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|"
    return [header, rule]


def _markdown(table: Table) -> str:
    body = [
        "| " + " | ".join(_cell(table, i, c, lambda t: f"**{t}**") for c in table.columns) + " |"
        for i in range(len(table.rows))
    ]
    notes = [f"- {n}" for n in table.footnotes] + [f"- {c}" for c in table.comparisons]
    return "\n".join(
        [f"### {table.title}", "", *_markdown_head(table.columns), *body] + (["", *notes] if notes else [])
    )


def format_table(table: pd.DataFrame, title: str = "") -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text in a terminal)."""
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(([title, ""] if title else []) + [*_markdown_head(list(table.columns)), *body])


def latex_escape(text: str) -> str:
    escaped = "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    return escaped.replace("+-", r"$\pm$")


def _latex(table: Table) -> str:
    spec = "l" + "r" * (len(table.columns) - 1)
    header = " & ".join(latex_escape(c) for c in table.columns) + r" \\"
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(table.title)}}}"]
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header, r"\midrule", *_latex_body(table)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [latex_escape(n) for n in table.footnotes + table.legend + table.comparisons]
    if notes:
        lines += [r"\par\smallskip\footnotesize", r" \\ ".join(notes)]
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _latex_body(table: Table) -> list[str]:
    """One line per row, with a rule between the dense row and the rest."""
    body = []
    for i in range(len(table.rows)):
        if i > 0 and table.kinds[i] != table.kinds[i - 1] and "dense" in (table.kinds[i - 1], table.kinds[i]):
            body.append(r"\midrule")
        cells = [_cell(table, i, c, lambda t: rf"\textbf{{{t}}}", latex_escape) for c in table.columns]
        body.append(" & ".join(cells) + r" \\")
    return body


def _html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for i in range(len(table.rows)):
        cells = "".join(f"<td>{_cell(table, i, c, lambda t: f'<b>{t}</b>', html.escape)}</td>" for c in table.columns)
        rows.append(f'<tr class="{table.kinds[i]}">{cells}</tr>')
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.footnotes + table.legend + table.comparisons)
    return (
        f"<h3>{html.escape(table.title)}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + f"\n</tbody>\n</table>\n<ul>{notes}</ul>"
    )


def _csv(tables: list[Table]) -> str:
    """The numbers behind every row (accuracies in %), one line per row, for spreadsheets and plots."""
    rows = []
    for table in tables:
        for record in table.records:
            row = {"group": table.title}
            for column in COLUMNS:
                if column.csv_name:
                    row |= column.csv(record)
            rows.append(row)
    return pd.DataFrame(rows, columns=CSV_FIELDS).to_csv(index=False, lineterminator="\n")
