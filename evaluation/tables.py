"""Result tables: atomic writes, summaries, comparison with published numbers.

Every table written by :func:`write_result_table` carries its provenance
(dataset, preset, commit, seed, wall time, command, ...) both as ``# key:
value`` comment lines at the top of the CSV and as a bullet list under the
title of the Markdown file. The Markdown title always contains the dataset
name, so that a table computed on a stand-in (synthetic / substitute) dataset
can never be mistaken for the paper's.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from regseg.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_csv",
    "summarise",
    "comparison_table",
    "format_mean_std",
    "to_markdown",
    "write_result_table",
    "read_result_csv",
    "git_commit",
]

#: Header keys listed first (in this order) in written tables; others follow
#: in the caller's order.
HEADER_KEY_ORDER = ("dataset", "preset", "commit", "seed", "wall time", "command")


# --------------------------------------------------------------------------- #
# Atomic writes: one implementation, in regseg.fileio; re-exported here because
# callers import ``atomic_write_text`` / ``atomic_write_bytes`` from this module.
# --------------------------------------------------------------------------- #


def _header_lines(header: Mapping[str, object] | None) -> list[str]:
    if not header:
        return []
    return [f"# {k}: {_one_line(v)}" for k, v in _ordered_header(header)]


def atomic_write_csv(
    df: pd.DataFrame,
    path,
    *,
    header: Mapping[str, object] | None = None,
    index: bool = True,
    float_format: str | None = None,
) -> Path:
    """Write a DataFrame as CSV atomically, optionally preceded by ``# key: value`` lines.

    Args:
        df: pandas.DataFrame.
        path: str or os.PathLike.
        header: mapping, optional, keyword-only. Provenance written as leading
            comment lines ``# key: value``. Read back with
            :func:`read_result_csv`.
        index: bool, keyword-only. Write the index as the first column
            (default True).
        float_format: str, optional. Passed to
            :meth:`pandas.DataFrame.to_csv` (default: full precision).

    Returns:
        pathlib.Path.

    Raises:
        OSError: If the file cannot be written.
    """
    body = df.to_csv(index=index, float_format=float_format, lineterminator="\n")
    lines = _header_lines(header)
    text = ("\n".join(lines) + "\n" if lines else "") + body
    return atomic_write_text(path, text)


def read_result_csv(path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a CSV written by :func:`write_result_table` / :func:`atomic_write_csv`.

    Returns:
        (pandas.DataFrame, dict): the table (first column as index) and the
        header dict (values as str).

    Raises:
        OSError: If the file cannot be read.
    """
    path = Path(path)
    header: dict[str, str] = {}
    n_skip = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].rstrip("\n").partition(": ")
            header[key] = value
            n_skip += 1
    df = pd.read_csv(path, skiprows=n_skip, index_col=0)
    return df, header


# --------------------------------------------------------------------------- #
# Summaries and comparison with published numbers
# --------------------------------------------------------------------------- #
def summarise(
    per_case: pd.DataFrame, columns: Sequence[str] | None = None, *, ddof: int = 0
) -> pd.DataFrame:
    """Mean and standard deviation over cases.

    Args:
        per_case: pandas.DataFrame, shape ``(n_cases, n_metrics)``. One row
            per case (e.g. per registration pair), one column per metric or
            structure.
        columns: sequence of str, optional. Columns to summarise, in this
            order (default: all numeric columns).
        ddof: int, keyword-only. Delta degrees of freedom of the std.
            Default 0 (``np.std``, as the Learn2Reg scorer and most released
            evaluation scripts); pass 1 for the sample std.

    Returns:
        pandas.DataFrame of shape ``(len(columns), 3)``: index = the columns,
        columns ``mean``, ``std``, ``n`` (number of non-NaN cases). NaN values
        are skipped (Learn2Reg ``nanmean`` convention for absent labels).

    Raises:
        KeyError: If a requested column is missing.
    """
    if columns is None:
        columns = list(per_case.select_dtypes(include="number").columns)
    columns = list(columns)
    missing = [c for c in columns if c not in per_case.columns]
    if missing:
        raise KeyError(f"summarise: columns not in the table: {missing}")
    rows = {}
    for c in columns:
        v = pd.to_numeric(per_case[c], errors="coerce").to_numpy(dtype=np.float64)
        v = v[~np.isnan(v)]
        if v.size == 0:
            rows[c] = (np.nan, np.nan, 0)
        else:
            std = float(np.std(v, ddof=ddof)) if v.size > ddof else np.nan
            rows[c] = (float(np.mean(v)), std, int(v.size))
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "std", "n"])
    out["n"] = out["n"].astype(int)
    return out


def _pub_pair(value) -> tuple[float, float]:
    if value is None:
        return (np.nan, np.nan)
    if isinstance(value, (tuple, list)):
        m = value[0] if len(value) > 0 else None
        s = value[1] if len(value) > 1 else None
    else:
        m, s = value, None
    m = np.nan if m is None else float(m)
    s = np.nan if s is None else float(s)
    return (m, s)


def comparison_table(
    ours: Mapping[str, pd.DataFrame],
    published: Mapping[str, Mapping[str, object]],
    row_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Side-by-side table of our results and a paper's published numbers.

    Args:
        ours: dict[str, pandas.DataFrame]. Per method, a DataFrame indexed by
            structure / metric with columns ``mean`` and ``std`` (e.g. the
            output of :func:`summarise`).
        published: dict[str, dict[str, (mean, std)]]. Per method, per
            structure: ``(mean, std)``; ``std`` may be ``None`` (or a bare
            number may be given) when the paper reports none.
        row_order: sequence of str, optional. Rows (structures) in the order
            of the paper's table. Default: the union of the structures of
            ``ours`` then ``published``, in first-seen order.

    Returns:
        pandas.DataFrame of shape ``(n_rows, 5 * n_methods)``: index =
        structures. For every method (those of ``ours`` first, then methods
        only published) the columns ``<method> ours mean``,
        ``<method> ours std``, ``<method> published mean``,
        ``<method> published std``, ``<method> diff`` (ours mean −
        published mean). Missing entries are NaN.

    Raises:
        KeyError: If a DataFrame in ``ours`` lacks a ``mean`` or ``std``
            column.
    """
    for m, df in ours.items():
        for col in ("mean", "std"):
            if col not in df.columns:
                raise KeyError(f"comparison_table: ours[{m!r}] has no column {col!r}")
    methods = list(ours) + [m for m in published if m not in ours]
    if row_order is None:
        seen: dict[str, None] = {}
        for df in ours.values():
            for r in df.index:
                seen.setdefault(r, None)
        for d in published.values():
            for r in d:
                seen.setdefault(r, None)
        row_order = list(seen)
    row_order = list(row_order)
    data: dict[str, list[float]] = {}
    for m in methods:
        df = ours.get(m)
        pub = published.get(m, {})
        om, os_, pm, ps, diff = [], [], [], [], []
        for r in row_order:
            if df is not None and r in df.index:
                a, b = float(df.at[r, "mean"]), float(df.at[r, "std"])
            else:
                a, b = np.nan, np.nan
            c, d = _pub_pair(pub.get(r))
            om.append(a)
            os_.append(b)
            pm.append(c)
            ps.append(d)
            diff.append(a - c)
        data[f"{m} ours mean"] = om
        data[f"{m} ours std"] = os_
        data[f"{m} published mean"] = pm
        data[f"{m} published std"] = ps
        data[f"{m} diff"] = diff
    out = pd.DataFrame(data, index=pd.Index(row_order, name="structure"), dtype=np.float64)
    return out


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #
def _is_missing(x) -> bool:
    try:
        return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))
    except TypeError:
        return False


def _is_p_value(label: str) -> bool:
    """Columns holding p-values (``p``, ``Wilcoxon p``, ``p-value``...)."""
    low = label.strip().lower()
    return low == "p" or low.endswith(" p") or low.startswith("p-value") or low.endswith("p-value")


def _fmt_p(x) -> str:
    """A p-value with 2 significant digits (``0.058``, ``3.8e-05``), never rounded to 0."""
    if _is_missing(x):
        return "–"
    x = float(x)
    return f"{x:.2g}" if x >= 1e-3 or x == 0 else f"{x:.1e}"


def _fmt_num(x, digits: int, signed: bool = False) -> str:
    if _is_missing(x):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):+d}" if signed else str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"
    return _md_escape(str(x))


def format_mean_std(mean, std, digits: int = 3) -> str:
    """Format ``mean ± std`` as in the papers' tables, e.g. ``0.706 ± 0.141``.

    A missing std gives just the mean; a missing mean gives ``–``.
    """
    if _is_missing(mean):
        return "–"
    if _is_missing(std):
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _one_line(v) -> str:
    return " ".join(str(v).splitlines())


def _mean_std_pairs(columns: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """Group columns into display columns: (label, mean_col, std_col) or (col, col, None)."""
    cols = [str(c) for c in columns]
    used: set[str] = set()
    out: list[tuple[str, str | None, str | None]] = []
    for c in cols:
        if c in used:
            continue
        if c == "mean" and "std" in cols:
            out.append(("mean ± std", "mean", "std"))
            used.update({"mean", "std"})
        elif c.endswith(" mean") and (c[: -len(" mean")] + " std") in cols:
            base = c[: -len(" mean")]
            out.append((base, c, base + " std"))
            used.update({c, base + " std"})
        elif c.endswith(" std") and (c[: -len(" std")] + " mean") in cols:
            continue  # printed with its mean
        else:
            out.append((c, c, None))
            used.add(c)
    return out


def to_markdown(df: pd.DataFrame, *, digits: int = 3) -> str:
    """Render a DataFrame as a GitHub Markdown table.

    Columns ``X mean`` / ``X std`` (and ``mean`` / ``std``) are merged into one
    column ``X`` shown as ``0.706 ± 0.141``; columns ending in ``diff`` get an
    explicit sign; NaN shows as ``–``; integer columns stay integers; p-value columns (``p``,
    ``... p``, ``p-value``) get 2 significant digits (``3.8e-05``, never ``0.000``). The index is
    the first column.

    Args:
        df: pandas.DataFrame.
        digits: int, keyword-only. Decimals for floats.

    Returns:
        str: the table, ending in a newline.
    """
    groups = _mean_std_pairs(list(df.columns))
    colmap = {str(c): c for c in df.columns}
    index_name = "" if df.index.name is None else str(df.index.name)
    head = [_md_escape(index_name)] + [_md_escape(g[0]) for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(groups)) + "|"]
    # values read column by column: a row (``iterrows``) would turn integer counts into floats
    for i, idx in enumerate(df.index):
        cells = [_md_escape(str(idx))]
        for label, mcol, scol in groups:
            value = df[colmap[mcol]].iloc[i]
            if scol is not None:
                cells.append(format_mean_std(value, df[colmap[scol]].iloc[i], digits))
            elif _is_p_value(str(label)) and isinstance(value, (float, np.floating)):
                cells.append(_fmt_p(value))
            else:
                cells.append(_fmt_num(value, digits, signed=label.endswith("diff")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ordered_header(header: Mapping[str, object]) -> list[tuple[str, object]]:
    items = list(header.items())
    first = [(k, header[k]) for k in HEADER_KEY_ORDER if k in header]
    rest = [(k, v) for k, v in items if k not in HEADER_KEY_ORDER]
    return first + rest


def write_result_table(
    df: pd.DataFrame,
    out_dir,
    stem: str,
    header: Mapping[str, object],
    *,
    title: str | None = None,
    overwrite: bool = False,
    digits: int = 3,
    notes: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` with provenance, atomically.

    * CSV: leading ``# key: value`` lines (the header), then the table at
      full precision (index as first column). Read back with
      :func:`read_result_csv`.
    * Markdown: ``# <title> — dataset: <dataset>`` line, a blank line, a
      bullet list ``- **key**: value`` of the header, a blank line, optional
      ``notes``, then the table from :func:`to_markdown` (``mean ± std``
      formatting, e.g. ``0.706 ± 0.141``).

    Args:
        df: pandas.DataFrame. The table (e.g. from :func:`summarise` or
            :func:`comparison_table`).
        out_dir: str or os.PathLike. Folder (created if missing).
        stem: str. File name without extension (no path separators).
        header: mapping. Provenance. Must contain ``dataset`` (the dataset
            actually used, e.g. ``"OASIS-3"`` or
            ``"synthetic stand-in for OASIS-3"``). Recommended keys:
            ``preset``, ``commit``, ``seed``, ``wall time``, ``command``;
            ``commit`` is filled with :func:`git_commit` if absent. Keys
            listed in ``HEADER_KEY_ORDER`` come first.
        title: str, optional, keyword-only. Title; default ``stem``. The
            dataset name is appended unless the title already contains it.
        overwrite: bool, keyword-only. If False (default) refuse to replace
            an existing file.
        digits: int, keyword-only. Decimals in the Markdown table.
        notes: str, optional, keyword-only. Free text placed between the
            header list and the table.

    Returns:
        (pathlib.Path, pathlib.Path): paths of the CSV and Markdown files.

    Raises:
        ValueError: If ``header`` has no non-empty ``dataset`` or ``stem`` is
            not a bare file name.
        FileExistsError: If ``<stem>.csv`` or ``<stem>.md`` exists and
            ``overwrite`` is False (nothing is written; the message names the
            file).
    """
    dataset = header.get("dataset") if header is not None else None
    if dataset is None or not str(dataset).strip():
        raise ValueError("write_result_table: header must name the 'dataset'")
    dataset = _one_line(dataset)
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem) or stem in (".", ".."):
        raise ValueError(f"write_result_table: stem must be a bare file name, got {stem!r}")
    out_dir = Path(out_dir)
    csv_path = out_dir / f"{stem}.csv"
    md_path = out_dir / f"{stem}.md"
    if not overwrite:
        for p in (csv_path, md_path):
            if p.exists():
                raise FileExistsError(f"refusing to overwrite existing file {p} (pass overwrite=True)")
    header = dict(header)
    if "commit" not in header:
        header["commit"] = git_commit()

    t = _one_line(title) if title else stem
    if dataset not in t:
        t = f"{t} — dataset: {dataset}"
    md = [f"# {t}", ""]
    md += [f"- **{_md_escape(str(k))}**: {_md_escape(_one_line(v))}" for k, v in _ordered_header(header)]
    md.append("")
    if notes:
        md += [notes.rstrip("\n"), ""]
    md_text = "\n".join(md) + "\n" + to_markdown(df, digits=digits)

    atomic_write_csv(df, csv_path, header=header)
    atomic_write_text(md_path, md_text)
    return csv_path, md_path


# --------------------------------------------------------------------------- #
# Provenance
# --------------------------------------------------------------------------- #
def git_commit(short: bool = True, path=None) -> str:
    """Commit hash of the git work tree containing this package (or ``path``).

    Never raises: every error yields ``"unknown"``.

    Args:
        short: bool. Abbreviated hash (``git rev-parse --short HEAD``) if
            True.
        path: str or os.PathLike, optional. Folder inside the repository
            (default: the folder of this file).

    Returns:
        str: the hash, with ``-dirty`` appended when tracked files have
        uncommitted changes (untracked files are ignored, as in
        ``git describe --dirty``); ``"unknown"`` if git is unavailable, this
        is not a repository, or it has no commit yet.
    """
    try:
        cwd = Path(path) if path is not None else Path(__file__).resolve().parent
        args = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
        res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=10)
        if res.returncode != 0 or not res.stdout.strip():
            return "unknown"
        commit = res.stdout.strip()
        st = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if st.returncode != 0:
            return commit
        return commit + ("-dirty" if st.stdout.strip() else "")
    except Exception:  # noqa: BLE001 - never raise
        return "unknown"


def structure_table(
    per_pair: Mapping[str, pd.DataFrame],
    published: Mapping[str, Mapping[str, object]],
    paper_rows: Sequence[str],
    *,
    mean_row: str | None = "mean",
    published_mean: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """A paper's per-structure table: our mean ± std over pairs beside the published values.

    Rows are the paper's structures in its order, then structures of our data the paper does
    not have (no published value), then the mean over structures. When our data lacks some of
    the paper's structures, those rows come first and empty, and the mean row is named
    ``"<mean_row> of N (no published value)"`` since it no longer averages the paper's set.

    Args:
        per_pair: ``{method: DataFrame}`` rows = pairs, columns = structures (e.g.
            :attr:`regseg.evaluation.pairs.PairEvaluation.dice`).
        published: ``{method: {structure: (mean, std)}}`` as printed in the paper.
        paper_rows: the paper's structures in table order.
        mean_row: the mean-over-structures row (mean and std over pairs of the per-pair mean)
            is named ``"<mean_row> of <number of structures>"``; ``None`` for no such row.
        published_mean: ``{method: value}`` published (or computed from the paper) for the mean
            row, used only when our structures are exactly ``paper_rows``.

    Returns:
        The :func:`comparison_table` (``<method> ours mean``, ``ours std``, ``published mean``,
        ``published std``, ``diff`` per method).
    """
    names = list(next(iter(per_pair.values())).columns) if per_pair else []
    complete = names == list(paper_rows)
    mean_name = None
    if mean_row is not None:
        mean_name = (f"{mean_row} of {len(names)}" if complete
                     else f"{mean_row} of {len(names)} (no published value)")
    ours = {}
    for method, df in per_pair.items():
        summary = pd.DataFrame({"mean": df.mean(axis=0), "std": df.std(axis=0, ddof=0)})
        if mean_name is not None:
            per_pair_mean = df.mean(axis=1)
            summary.loc[mean_name] = [per_pair_mean.mean(), per_pair_mean.std(ddof=0)]
        ours[method] = summary
    pub = {m: dict(v) for m, v in published.items()}
    if complete and mean_name is not None and published_mean:
        for m, value in published_mean.items():
            pub.setdefault(m, {})[mean_name] = (value, None)
    rows = [s for s in paper_rows if s in names] + [s for s in names if s not in paper_rows]
    if not complete:
        rows = [s for s in paper_rows if s not in names] + rows
    if mean_name is not None:
        rows.append(mean_name)
    return comparison_table(ours, pub, rows)
