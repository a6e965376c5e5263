"""MiniLM backends: the ONNX graph (built from the packaged weights) against sentence-transformers.

Same weights, same vectors (checked here: max |difference|), one thread each, so the numbers say
which backend to run by default.  Single-query latency is what a decision from text pays;
throughput (batches of 32, sorted by length) is what embedding a training table pays.

    .venv/bin/python benchmarks/embedders.py
"""

from __future__ import annotations

import time

import numpy as np
from _common import console, environment, table, time_call

from tinydancer.llm.embeddings import MiniLMEmbedder
from tinydancer.llm.tables import load_routellm_mmlu, shared_data_dir

SHORT = "Which of the following best describes the function of the mitochondria in eukaryotic cells?"


def main() -> None:
    import torch

    torch.set_num_threads(1)
    console.print(environment() + f", torch {torch.__version__} (1 thread)")
    data = shared_data_dir()
    texts = load_routellm_mmlu(data).queries[:256] if data else [SHORT + f" variant {i}" for i in range(256)]
    onnx = MiniLMEmbedder("onnx", threads=1)
    st = MiniLMEmbedder("torch")
    diff = float(np.abs(onnx.embed(texts[:64]) - st.embed(texts[:64])).max())
    rows = []
    for name, emb in (("ONNX Runtime (our graph)", onnx), ("sentence-transformers + torch 2.13", st)):
        single = time_call(lambda: emb.embed([SHORT]), min_time=1.0)
        t0 = time.perf_counter()
        emb.embed(texts)
        per_text = (time.perf_counter() - t0) / len(texts)
        rows.append([name, f"{single * 1e3:.2f} ms", f"{per_text * 1e3:.2f} ms", f"{1 / per_text:.0f}/s"])
    console.print(table(f"MiniLM-L6 embedding, 1 thread (vectors agree to {diff:.1e})",
                        ["backend", "one short query", "MMLU prompts, batched", "throughput"], rows))


if __name__ == "__main__":
    main()
