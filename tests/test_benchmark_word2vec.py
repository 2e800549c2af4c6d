"""benchmarks/word2vec.py: a --quick run prints the table and goal lines computed from it; the
gensim baseline is gensim's skip-gram with negative sampling. No wall-clock assertions."""

from __future__ import annotations

import re

import pytest
from bench_scripts import (
    assert_quick_report,
    assert_rejected,
    assert_verdict,
    load_script,
    run_script,
    tables,
)

pytest.importorskip("gensim")  # a dev dependency: the baseline

COLUMNS = [
    "method",
    "words/s (median)",
    "seconds (median)",
    "Spearman (mean)",
    "Spearman per seed",
    "pairs in vocabulary",
]


def test_quick_run_prints_the_table_and_the_goals(tmp_path) -> None:
    md = tmp_path / "table.md"
    proc = run_script("word2vec", "--quick", "--workers", "1", "--markdown", str(md))
    assert_quick_report(proc, md)
    (rows,) = tables(proc.stdout)
    assert rows[0] == COLUMNS
    ours, hogwild, gensim = rows[1:]
    assert [r[0] for r in rows[1:]] == [
        "flowgraph train_word2vec",
        "flowgraph train_word2vec, deterministic=False (hogwild)",
        "gensim Word2Vec (sg=1, hs=0)",
    ]
    speed = [float(r[1].replace(",", "")) for r in (ours, gensim)]
    rho = [float(r[3]) for r in (ours, gensim)]
    assert all(s > 0 for s in speed) and all(-1 <= x <= 1 for x in rho)
    assert ours[5] == hogwild[5] == gensim[5]  # same vocabulary, same pairs scored
    goals = re.findall(r"^- (.*): ([-+\d.]+)× — (met|NOT met)$", proc.stdout, re.M)
    assert goals[0][0] == "words/s ≥ 1× gensim's"
    ratio = float(goals[0][1])
    assert ratio == pytest.approx(speed[0] / speed[1], abs=0.01)
    assert_verdict(goals[0][2], goals[0][1], 1.0, at_most=False)
    gap = re.search(
        r"^- Spearman ≥ gensim's − 0.03: ([-+\d.]+) — (met|NOT met)$", proc.stdout, re.M
    )
    assert gap is not None and float(gap.group(1)) == pytest.approx(rho[0] - rho[1], abs=0.002)
    assert_verdict(gap.group(2), gap.group(1), -0.03, at_most=False)
    assert "gensim 4." in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        (["--corpus", "/no/such.txt"], "--corpus: no such file"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str) -> None:
    assert_rejected("word2vec", args, message)


def test_the_baseline_is_gensim_skip_gram() -> None:
    script = load_script("word2vec")
    args = script.parse_args(["--quick", "--workers", "1"])
    sentences = script.read_corpus(args.corpus, 5)
    opts = dict(vector_size=8, window=2, negative=2, min_count=1, sample=0.0, epochs=1, alpha=0.025)
    wv = script.run_gensim(sentences, opts, 0, args)
    from collections import Counter

    counts = Counter(w for s in sentences for w in s)
    assert len(wv) == len(counts) and wv.vector_size == 8
    assert wv.counts.tolist() == [counts[w] for w in wv.words]


def test_synthetic_corpus_times_without_spearman() -> None:
    proc = run_script("word2vec", "--quick", "--workers", "1", "--synthetic", "3000")
    assert proc.returncode == 0, proc.stderr
    assert "Corpus synthetic Zipf(1.1), seed 0 (3,000 tokens × 1 epochs), pairs none" in proc.stdout
    assert "- Spearman ≥ gensim's − 0.03: not measured (a synthetic corpus has no meaning)" in (
        proc.stdout
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| flowgraph")]
    assert len(rows) == 2 and all(row.endswith("| n/a | n/a | n/a |") for row in rows)


def test_zipf_corpus_is_reproducible() -> None:
    script = load_script("word2vec")
    a, b = script.zipf_corpus(2500), script.zipf_corpus(2500)
    assert a == b and [len(s) for s in a] == [1000, 1000, 500]
