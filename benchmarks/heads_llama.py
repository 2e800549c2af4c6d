"""Head metrics on a Llama-style checkpoint of about 100M parameters, beside transformers.

Issue 20, "Measure": a Llama-style model — 12 layers, 12 query heads and 4 key heads (GQA) of
dimension 64, width 768, intermediate 2048, a 32,000-token vocabulary, tied embeddings, rotary
θ = 10,000, random init (``transformers.LlamaConfig`` / ``LlamaForCausalLM``, seed 0; 98M
parameters) — is saved with ``save_pretrained`` (safetensors, float32) into a temporary
directory. In this one process, median of ``--repeats``:

- load s: ``models.heads.load_checkpoint(dir)`` beside ``LlamaForCausalLM.from_pretrained(dir,
  attn_implementation="eager")``;
- load + first attention s: our load is lazy (tensors are read when first used), so the fair
  total is load plus the first ``attention`` call, beside ``from_pretrained`` plus one forward;
- attention s: every head's probabilities at T = ``--tokens`` (512) on a loaded model —
  ``Checkpoint.attention`` of a new sequence (it caches by sequence) beside transformers' eager
  forward with ``output_attentions=True``; the script fails unless they agree (max |Δ| ≤ 1e-5);
- one head's metrics s: ``qk_form`` (model space) and ``token_distances`` of the T tokens, on a
  freshly loaded checkpoint (cold: reading the layer's weights included);
- peak MiB: the resident memory load + one attention add, in a fresh child process per route
  (VmHWM − VmRSS before; Linux only, ``--no-memory`` skips it).

Goal lines: load ≤ transformers' time and ≤ its peak memory; attention ≤ transformers' eager
time; one head's metrics < 0.5 s — judged on unrounded values.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _report
import numpy as np
import torch

from flowgraph.models.heads import load_checkpoint

SIZES = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
         "num_key_value_heads": 4, "intermediate_size": 2048, "vocab_size": 32000}  # fmt: skip
QUICK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300}  # fmt: skip
GOAL_METRICS_S = 0.5


def save_llama(directory: Path, sizes: dict, n_ctx: int) -> int:
    """Write the random Llama into ``directory``; returns its parameter count."""
    import transformers

    config = transformers.LlamaConfig(
        **sizes, max_position_embeddings=n_ctx, tie_word_embeddings=True, rope_theta=10000.0,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def transformers_model(directory: Path):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(
        directory, attn_implementation="eager", dtype=torch.float32
    ).eval()


def reference(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(ids)[None], output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).float().numpy()


# --- memory in a child process -----------------------------------------------------------------
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def child_peak(directory: str, route: str, tokens: int, vocab: int) -> int:
    """In this fresh child: the resident bytes load + one attention add."""
    import transformers  # noqa: F401  # imports are not what is measured

    ids = np.random.default_rng(1).integers(0, vocab, tokens)
    gc.collect()
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if route == "ours":
        load_checkpoint(Path(directory)).attention(ids)
    else:
        reference(transformers_model(Path(directory)), ids)
    return max(_status_bytes("VmHWM") - before, 0)


CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import heads_llama as s; "
    "print(s.child_peak(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))"
)


def measure_peak(directory: Path, route: str, tokens: int, vocab: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(directory), route,
         str(tokens), str(vocab)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory child ({route}) failed:\n{proc.stderr}")
    return int(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = _report.new_parser(__doc__, quick="a smoke run: a tiny Llama, T = 32, one repeat")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process peaks")
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"tokens": 2, "repeats": 1})
    sizes = QUICK if args.quick else SIZES
    if args.quick:
        args.tokens, args.repeats = 32, 1
    memory = not args.no_memory and Path("/proc/self/clear_refs").exists()
    load_start = _report.load_average()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "llama"
        params = save_llama(directory, sizes, max(args.tokens, 64))
        _report.log(f"saved a {params / 1e6:.1f}M-parameter Llama")
        load_checkpoint(directory).attention(rng.integers(0, sizes["vocab_size"], 8))  # warm
        transformers_model(directory)
        times: dict[str, list[float]] = {
            k: [] for k in ("ours load", "hf load", "ours first", "hf first", "ours attn",
                            "hf attn", "metrics")
        }  # fmt: skip
        worst = 0.0
        for rep in range(args.repeats):
            ids = rng.integers(0, sizes["vocab_size"], args.tokens)
            t0 = time.perf_counter()
            ckpt = load_checkpoint(directory)
            times["ours load"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model = transformers_model(directory)
            times["hf load"].append(time.perf_counter() - t0)
            first = rng.integers(0, sizes["vocab_size"], args.tokens)
            t0 = time.perf_counter()
            ckpt.attention(first)  # reads the weights
            times["ours first"].append(times["ours load"][-1] + time.perf_counter() - t0)
            t0 = time.perf_counter()
            reference(model, first)
            times["hf first"].append(times["hf load"][-1] + time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = ckpt.attention(ids)
            times["ours attn"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = reference(model, ids)
            times["hf attn"].append(time.perf_counter() - t0)
            worst = max(worst, float(np.abs(ours - ref).max()))
            fresh = load_checkpoint(directory)
            t0 = time.perf_counter()
            fresh.qk_form(5 % fresh.num_layers, 3, "model")
            fresh.token_distances(5 % fresh.num_layers, 3, ids)
            times["metrics"].append(time.perf_counter() - t0)
            del model
            _report.log(f"  repeat {rep + 1}/{args.repeats}")
        if worst > 1e-5:
            raise AssertionError(f"attention differs from transformers: max |Δ| = {worst:.3g}")
        peaks = {}
        if memory:
            for route in ("ours", "hf"):
                peaks[route] = measure_peak(directory, route, args.tokens, sizes["vocab_size"])
    med = {k: float(np.median(v)) for k, v in times.items()}

    def mib(route: str) -> str:
        return f"{peaks[route] / 2**20:,.0f}" if route in peaks else "—"

    rows = [
        ["load", f"{med['ours load']:.3f}", f"{med['hf load']:.3f}"],
        ["load + first attention", f"{med['ours first']:.3f}", f"{med['hf first']:.3f}"],
        [f"attention, every head, T = {args.tokens}", f"{med['ours attn']:.3f}",
         f"{med['hf attn']:.3f}"],
        ["one head's metrics (qk_form + token_distances), cold", f"{med['metrics']:.3f}", "—"],
        ["peak MiB: load + one attention (child process)", mib("ours"), mib("hf")],
    ]  # fmt: skip
    lines = [
        _report.machine_line(f"torch {torch.__version__}, numpy {np.__version__}"),
        "",
        f"Command: `{_report.command_line()}`",
        "",
        f"A {params / 1e6:.1f}M-parameter Llama ({sizes}); max |Δ| attention vs transformers "
        f"= {worst:.2g}.",
        "",
        *_report.markdown_table(["step", "ours s", "transformers s"], "lrr", rows),
        "",
        "Goals (issue 20):",
    ]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines.append(f"- load ≤ transformers: {med['ours load']:.3f} s vs {med['hf load']:.3f} s — "
                 f"{verdict(med['ours load'] <= med['hf load'])}")  # fmt: skip
    first_ok = verdict(med["ours first"] <= med["hf first"])
    lines.append(f"- load + first attention ≤ transformers: {med['ours first']:.3f} s vs "
                 f"{med['hf first']:.3f} s — {first_ok}")  # fmt: skip
    if peaks:
        lines.append(f"- peak ≤ transformers: {mib('ours')} vs {mib('hf')} MiB — "
                     f"{verdict(peaks['ours'] <= peaks['hf'])}")  # fmt: skip
    attn_ok = verdict(med["ours attn"] <= med["hf attn"])
    lines.append(f"- attention ≤ transformers' eager: {med['ours attn']:.3f} s vs "
                 f"{med['hf attn']:.3f} s — {attn_ok}")  # fmt: skip
    lines.append(f"- one head's metrics < {GOAL_METRICS_S} s: {med['metrics']:.3f} s — "
                 f"{verdict(med['metrics'] < GOAL_METRICS_S)}")  # fmt: skip
    if args.quick:
        lines += ["", "This is a --quick smoke run: its numbers mean nothing."]
    lines += ["", _report.load_span(load_start), ""]
    _report.emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
