"""Query embedders per prompt: the static table distilled from MiniLM against ONNX MiniLM, and the
two MiniLM backends against each other.

1. Static vs ONNX MiniLM (issue 29's target: ≥ 20× faster per prompt), in the same run, on
   fresh texts (no embedding cache: each call embeds a prompt not seen before, as the gateway
   pays for a new prompt): one prompt per call at chat length (~150 characters, MT-bench and
   LLMRouter questions of 120-180 characters) and at MMLU length (~480 characters, MMLU
   prompts of 420-540), median over the calls; and throughput on a batch of 256 MMLU prompts.
   ONNX Runtime runs with its default threads (both cores), as the gateway runs it.  The static
   table's one-time build (MiniLM over its 30,522 WordPieces, PCA, weights) is timed from
   scratch in a temporary cache folder.
2. ONNX graph vs sentence-transformers (same weights, same vectors), one thread each; skipped
   when sentence-transformers is not installed (``make bench`` installs it).

    .venv/bin/python benchmarks/embedders.py [--calls 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import console, environment, table, time_call

from tinydancer.llm.embeddings import Embedder, MiniLMEmbedder, make_embedder
from tinydancer.llm.tables import load_llmrouter, load_routellm_mmlu, shared_data_dir

SHORT = "Which of the following best describes the function of the mitochondria in eukaryotic cells?"


def prompts(data: Path | None) -> tuple[list[str], list[str]]:
    """(chat-length, MMLU-length) prompts, distinct, in a fixed order."""
    if data is None:
        chat = [f"{SHORT} Answer briefly, case {i}, and say why in a sentence or two please." for i in range(400)]
        return chat, [" ".join([SHORT] * 5) + f" {i}" for i in range(400)]
    mt = [json.loads(line)["turns"][0] for line in (data / "routellm" / "mt_bench" / "question.jsonl").read_text().splitlines()]
    chat = [q for q in mt + load_llmrouter(data, "train").queries if 120 <= len(q) <= 180]
    mmlu = [q for q in load_routellm_mmlu(data).queries if 420 <= len(q) <= 540]
    return list(dict.fromkeys(chat)), list(dict.fromkeys(mmlu))


def per_call(embedder: Embedder, texts: list[str]) -> float:
    """Median seconds to embed one fresh text per call."""
    samples = []
    for text in texts:
        t0 = time.perf_counter()
        embedder.embed([text])
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def batched(embedder: Embedder, texts: list[str]) -> float:
    t0 = time.perf_counter()
    embedder.embed(texts)
    return (time.perf_counter() - t0) / len(texts)


def static_vs_minilm(calls: int) -> None:
    data = shared_data_dir()
    chat, mmlu = prompts(data)
    static = make_embedder("static")
    static.embed(["warm"])  # the table is read from the cache (or built) once, outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fresh = make_embedder("static", cache_dir=Path(tmp))
        fresh.embed(["build"])
        build_s = time.perf_counter() - t0
        same = bool(np.array_equal(np.load(fresh.table_path()), np.load(static.table_path())))
    minilm = MiniLMEmbedder("onnx")
    minilm.embed(["warm"])
    rows = []
    timings: dict[str, dict[str, float]] = {}
    sets: list[tuple[str, Callable[[Embedder], float]]] = [
        (f"chat prompt, 1 per call (median {int(np.median([len(t) for t in chat[:calls]]))} chars)",
         lambda e: per_call(e, chat[:calls])),
        (f"MMLU prompt, 1 per call (median {int(np.median([len(t) for t in mmlu[:calls]]))} chars)",
         lambda e: per_call(e, mmlu[:calls])),
        ("MMLU prompts, batch of 256, per prompt", lambda e: batched(e, mmlu[calls:calls + 256])),
    ]
    for what, run in sets:
        m, s = run(minilm), run(static)
        timings[what] = {"minilm": m, "static": s}
        rows.append([what, f"{m * 1e3:.2f} ms", f"{s * 1e6:.0f} µs", f"{m / s:.0f}×"])
    console.print(table(f"Per prompt, fresh texts, same run ({calls} calls each; ONNX Runtime default threads)",
                        ["prompts", "MiniLM (ONNX)", f"static ({static.id})", "static is faster by"], rows,
                        key="embedders-static"))
    console.print(f"static table built from scratch in {build_s:.1f} s (MiniLM over its 30,522 WordPieces, PCA, "
                  f"weights); read from the cache afterwards; identical to the cached table built earlier: {same}")


def backends() -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        console.print("sentence-transformers not installed: the ONNX/torch backend comparison is skipped (make bench)")
        return
    import torch

    torch.set_num_threads(1)
    console.print(f"torch {torch.__version__} (1 thread)")
    data = shared_data_dir()
    texts = load_routellm_mmlu(data).queries[:256] if data else [SHORT + f" variant {i}" for i in range(256)]
    onnx = MiniLMEmbedder("onnx", threads=1)
    st = MiniLMEmbedder("torch")
    diff = float(np.abs(onnx.embed(texts[:64]) - st.embed(texts[:64])).max())
    rows = []
    for name, emb in (("ONNX Runtime (our graph)", onnx), ("sentence-transformers + torch 2.13", st)):
        single = time_call(lambda: emb.embed([SHORT]), min_time=1.0)
        per_text = batched(emb, texts)
        rows.append([name, f"{single * 1e3:.2f} ms", f"{per_text * 1e3:.2f} ms", f"{1 / per_text:.0f}/s"])
    console.print(table(f"MiniLM-L6 embedding, 1 thread (vectors agree to {diff:.1e})",
                        ["backend", "one short query", "MMLU prompts, batched", "throughput"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="fresh prompts timed one per call, per length")
    args = parser.parse_args()
    console.print(environment())
    static_vs_minilm(args.calls)
    backends()


if __name__ == "__main__":
    main()
