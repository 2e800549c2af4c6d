"""``flowgraph demo``: check the published patterns side by side and draw the story.

Prints a comparison table at one n, the full report of a pattern that loses information (with
its witness), the flow constraint separating the star from LTR, and writes pictures into ``out``:
self-contained HTML figures always (plotly.js is embedded: they open offline), PNG copies when
kaleido finds a Chromium/Chrome on the machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import flowgraph as fg
from flowgraph import plot

__all__ = ["comparison_rows", "run_demo"]

FLOW_N = 256  # one max flow per query: keep the flow comparison small and quick


def _patterns(n: int) -> list[tuple[str, fg.Pattern]]:
    l = math.isqrt(n)  # noqa: E741  # the papers' name for the stride
    return [
        ("dense (causal)", fg.dense(n)),
        (f"local w={l} (causal)", fg.local(n, l)),
        ("strided (causal)", fg.strided(n)),
        ("fixed (causal)", fg.fixed(n)),
        ("strided (bidirectional)", fg.strided(n, causal=False)),
        ("fixed (bidirectional)", fg.fixed(n, causal=False)),
        ("ltr", fg.ltr(n)),
        ("rtl", fg.rtl(n)),
        ("star", fg.star(n)),
    ]


def comparison_rows(n: int) -> list[dict[str, object]]:
    """One row per published pattern at length n: the headline numbers of its report."""
    rows = []
    for label, pattern in _patterns(n):
        r = fg.check(pattern)
        rows.append(
            {
                "pattern": label,
                "full information": "yes" if r.full_information else "no",
                "missing pairs": f"{r.missing_pairs:,}",
                "witness (q, k)": "—" if r.witness is None else f"{r.witness}",
                "edges": f"{r.edges_total:,}",
                "× n·√n": f"{r.edge_ratio:.2f}",
                "empty rows": str(sum(len(e) for e in r.empty_rows)),
            }
        )
    return rows


def _table(rows: list[dict[str, object]]) -> str:
    headers = list(rows[0])
    width = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    line = "  ".join(h.ljust(width[h]) for h in headers)
    body = ["  ".join(str(r[h]).ljust(width[h]) for h in headers) for r in rows]
    return "\n".join([line, "  ".join("-" * width[h] for h in headers), *body])


def _save(fig: object, out: Path, stem: str) -> list[Path]:
    html = out / f"{stem}.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)  # type: ignore[attr-defined]
    written = [html]
    try:
        png = out / f"{stem}.png"
        plot.write_png(fig, png)  # type: ignore[arg-type]
        written.append(png)
    except RuntimeError as exc:  # no kaleido or no browser: the HTML still shows everything
        print(f"  (PNG skipped: {exc})")
    return written


def run_demo(n: int, out: Path) -> int:
    """Print the comparison and reports, write the pictures; returns the exit status (0)."""
    print(f"flowgraph demo — the published sparse patterns at n = {n} (stride ⌊√n⌋)\n")
    print(_table(comparison_rows(n)))

    fixed = fg.fixed(n)
    print("\nOpenAI's fixed pattern loses information:\n")
    print(fg.check(fixed).summary())

    print(f"\nThe flow constraint (n = {FLOW_N}): full information is not enough —")
    for pattern in (fg.star(FLOW_N), fg.ltr(FLOW_N), fg.strided(FLOW_N)):
        f = fg.check(pattern, flow=True).flow
        assert f is not None
        print(
            f"  {pattern.name:8s} median independent channels into a query f(q) = {f.median:g}"
            f"  (min {f.min}, max {f.max})"
        )

    out.mkdir(parents=True, exist_ok=True)
    small = 32
    written: list[Path] = []
    for pattern in (fg.fixed(small, stride=4), fg.ltr(small, stride=4)):
        report = fg.check(pattern)
        written += _save(plot.make_mask_figure(pattern), out, f"{pattern.name}_masks")
        written += _save(
            plot.make_reachability_figure(pattern, report), out, f"{pattern.name}_reachability"
        )
        written += _save(
            plot.make_flow_graph_figure(pattern, report), out, f"{pattern.name}_flow_graph"
        )
    written += _save(plot.make_edges_figure([64, 256, 1024, 4096]), out, "edges_vs_n")
    print(f"\nPictures (n = {small}, stride 4) written to {out}/:")
    for path in written:
        print(f"  {path}")
    return 0
