"""Static token embeddings distilled from the packaged MiniLM (the Model2Vec recipe), for routing
at tens of microseconds a prompt instead of the transformer's 10-30 ms.

Why: the routed gateway and ``router train`` spend nearly all their time in MiniLM (GUIDE §5,
issue 29), while the router on top needs only a rough position of the query in MiniLM's space.
A static table keeps most of that position for a lookup and a sum.

The recipe, built once from the weights already installed (nothing is downloaded):

1. **Vocabulary pass.**  Every WordPiece of MiniLM's tokenizer goes through the transformer
   alone, as ``[CLS] piece [SEP]``, mean pooled and L2-normalized exactly as MiniLM embeds a
   sentence (our ONNX graph, :mod:`._minilm_onnx`).
2. **PCA.**  The vocabulary vectors are centred and projected on their top ``dim`` principal
   axes (NumPy SVD, each axis's sign fixed so the build is reproducible): fewer floats to add
   per token, and the axes that only encode "this is a one-token input" are the first ones
   the centring removes.
3. **Frequency weights (SIF).**  A piece's vector is scaled by ``a / (a + p)`` (Arora et al.
   2017, the weighting Model2Vec uses), where ``p`` is a Zipf estimate of its frequency from
   its rank.  BERT's vocabulary has no counts, but its words are stored roughly by frequency
   ("the", "of", "and", "in" first), so the rank is the vocabulary order.  SIF rather than
   ``log(rank)``: it is bounded (1 for rare pieces) and flattens out over the long tail, so
   two rare domain words are not weighted apart by an accident of order, while frequent
   pieces ("the", "?", "is") shrink towards zero.  The rank skips ``[PAD]``/``[unusedN]``/
   special tokens, which never occur in a prompt.  On the training folds of MMLU and
   LLMRouter (ridge and kNN, 3-fold AIQ) no weighting, SIF with a = 1e-4 or 1e-3, Model2Vec's
   raw-id ranks and ``log(rank)`` all landed within 0.003 of one another, i.e. the weighting
   does not matter measurably for routing here (benchmarks/RESULTS.md); SIF is kept because it
   is the recipe's own and does no harm.
4. **A prompt** is the sum of its pieces' weighted vectors (no ``[CLS]``/``[SEP]``), L2
   normalized.  Vectorized: one ``np.add.reduceat`` over the concatenated pieces of a batch.

The table is cached on disk (``.npy``, written atomically: a temporary file, then a rename), its
name keyed by the recipe's version, the dimension and a digest of the weights, so other
weights or another recipe never read a stale table.  The id (``static-minilm-v1-256``) carries
the version: a router trained on one version refuses another.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._io import atomic_write_bytes
from ..errors import ValidationError
from .._lines import LineProgress
from .embedder_inputs import check_texts

#: bump when anything in the recipe changes (inputs, pooling, PCA, weights): it is in the id
STATIC_VERSION = 1
STATIC_PREFIX = "static-minilm-v"
DEFAULT_STATIC_DIM = 256
#: SIF's smoothing constant, as in Arora et al. and Model2Vec
SIF_A = 1e-4

Encoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class StaticSource:
    """Where a table comes from, each part loaded only when a table must be built or read.

    ``key`` names the weights in the cache file's name; ``tokenizer`` gives a ``tokenizers``
    Tokenizer with ``[CLS]``/``[SEP]`` in its vocabulary; ``encoder`` gives the transformer
    (``(B, 3)`` int64 ids to ``(B, D)`` vectors).  The packaged MiniLM's source is
    :func:`tinydancer.llm.embeddings.minilm_static_source`; tests pass a tiny one.  Passing it in
    keeps this module free of the MiniLM loader (no import cycle with ``embeddings``).
    """

    key: Callable[[], str]
    tokenizer: Callable[[], Any]
    encoder: Callable[[], Encoder]


def static_id(dim: int, version: int = STATIC_VERSION) -> str:
    """The embedder id a router records, e.g. ``static-minilm-v1-256``."""
    return f"{STATIC_PREFIX}{version}-{dim}"


def parse_static_id(embedder_id: str) -> tuple[int, int] | None:
    """``(version, dim)`` of a static id, or None when the id is not a static one."""
    if not embedder_id.startswith(STATIC_PREFIX):
        return None
    try:
        version, dim = embedder_id[len(STATIC_PREFIX):].split("-")
        return int(version), int(dim)
    except ValueError:
        return None


def content_ranks(tokens: Sequence[str]) -> np.ndarray:
    """Each piece's frequency rank: its position in the vocabulary among the pieces a text can
    produce.  ``[PAD]``, ``[unusedN]`` and the special tokens (anything in brackets) never occur
    in a tokenized prompt, so they do not push the real pieces' ranks back."""
    special = np.array([t.startswith("[") and t.endswith("]") and len(t) > 2 for t in tokens])
    ranks = np.cumsum(~special) - 1
    return np.where(special, len(tokens), ranks).astype(np.float64)


def sif_weights(ranks: np.ndarray, a: float = SIF_A) -> np.ndarray:
    """``a / (a + p)`` with ``p`` the Zipf probability of each rank (p ∝ 1 / (rank + 2))."""
    inv = 1.0 / (ranks + 2.0)
    p = inv / inv.sum()
    return a / (a + p)


def pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The rows of ``vectors`` centred and projected on their top ``dim`` principal axes.

    Each axis's sign is fixed (its largest |loading| positive): SVD may return either sign, and
    the table must be the same on every build."""
    x = vectors.astype(np.float64)
    x -= x.mean(axis=0)
    if not 1 <= dim <= x.shape[1]:
        raise ValidationError(f"the static embedder's dim must be 1..{x.shape[1]}, got {dim}")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:dim]
    signs = np.sign(axes[np.arange(dim), np.abs(axes).argmax(axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    return x @ axes.T


def build_table(encode: Encoder, vocab_size: int, cls_id: int, sep_id: int, ranks: np.ndarray, dim: int,
                batch_size: int = 2048, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The (vocab_size, dim) float32 table: every piece through ``encode`` as ``[CLS] piece [SEP]``,
    PCA to ``dim``, scaled by its SIF weight.  ``encode`` maps (B, 3) int64 ids to (B, D) vectors
    (the transformer, or a stand-in in tests); ``progress`` is told each batch's count of pieces."""
    ids = np.arange(vocab_size, dtype=np.int64)
    rows = []
    for start in range(0, vocab_size, batch_size):
        chunk = ids[start:start + batch_size]
        batch = np.stack([np.full_like(chunk, cls_id), chunk, np.full_like(chunk, sep_id)], axis=1)
        rows.append(np.asarray(encode(batch), dtype=np.float32))
        if progress is not None:
            progress(len(chunk))
    reduced = pca(np.concatenate(rows), dim)
    return (reduced * sif_weights(ranks)[:, None]).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


class StaticEmbedder:
    """A prompt's vector = the SIF-weighted sum of its WordPieces' distilled vectors, L2-normalized.

    The table is built on first use from ``source`` (for the packaged MiniLM, 26-42 s on 2 cores;
    ``build_seconds`` says how long it took) and then read from ``cache_dir``.
    """

    def __init__(self, dim: int, source: StaticSource, cache_dir: Path) -> None:
        if dim < 1:
            raise ValidationError(f"the static embedder's dim must be positive, got {dim}")
        self._dim = int(dim)
        self.source = source
        self.cache_dir = Path(cache_dir)
        self._tokenizer: Any = None
        self._table: np.ndarray | None = None
        self._lock = threading.Lock()
        self.build_seconds: float | None = None

    @property
    def id(self) -> str:
        return static_id(self._dim)

    @property
    def dim(self) -> int:
        return self._dim

    # ------------------------------------------------------------------ building
    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            tok = self.source.tokenizer()
            tok.no_truncation()  # a static sum has no length limit; the gateway caps a prompt's characters
            tok.no_padding()
            self._tokenizer = tok
        return self._tokenizer

    def table_path(self) -> Path:
        """Where the table is cached: keyed by version, dim and the source's weights."""
        return self.cache_dir / f"{self.id}-{self.source.key()}.npy"

    def _ensure_table(self) -> np.ndarray:
        if self._table is not None:
            return self._table
        with self._lock:
            if self._table is not None:
                return self._table
            tok = self._load_tokenizer()
            path = self.table_path()
            table = None
            if path.is_file():
                try:
                    table = np.load(path, allow_pickle=False)
                except (OSError, ValueError):
                    table = None  # a damaged file is rebuilt, not trusted
            vocab = tok.get_vocab(with_added_tokens=True)
            if table is None or table.shape != (len(vocab), self._dim) or table.dtype != np.float32:
                started = time.perf_counter()
                tokens = [""] * len(vocab)
                for piece, i in vocab.items():
                    tokens[i] = piece
                # once per install and weights (~30-40 s on 2 cores): said on stderr with its rate and time
                # left, so that the first `router train` or gateway start is not a silent wait
                lines = LineProgress(f"building the static embedder's token table ({len(tokens):,} pieces through "
                                     f"MiniLM, once; cached in {self.cache_dir})", len(tokens))
                table = build_table(self.source.encoder(), len(tokens), vocab["[CLS]"], vocab["[SEP]"],
                                    content_ranks(tokens), self._dim, progress=lines.advance)
                lines.finish()
                if "[UNK]" in vocab:  # an unknown character says nothing about the query: it adds nothing
                    table[vocab["[UNK]"]] = 0.0
                _save_npy(path, table)
                self.build_seconds = time.perf_counter() - started
            self._table = table
            return table

    # ------------------------------------------------------------------ embedding
    #: texts per vectorized step: the gathered rows of a chunk (pieces × dim floats) stay near 30 MB
    #: even for long prompts, where a whole table at once would gather gigabytes
    chunk_size = 256

    #: texts up to this many characters take well under a millisecond (~0.06 ms at 70 characters,
    #: ~0.4 ms at 512 on 2 cores): the gateway embeds them on its event loop (gateway/scoring.py)
    inline_chars = 512

    def _embed_one(self, table: np.ndarray, text: str) -> np.ndarray:
        """One text (the routed path): the same sum as :meth:`_embed_chunk` without its batch bookkeeping,
        a third of the time for a chat-length prompt."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        out = np.zeros((1, self._dim), dtype=np.float32)
        if ids:
            out[0] = np.add.reduceat(table[ids], [0], axis=0)[0]
        norms = np.linalg.norm(out, axis=1)
        if norms[0] < 1e-12:  # as in _embed_chunk: a fixed unit vector, not zeros
            out[0] = 0.0
            out[0, 0] = 1.0
            return out
        out /= norms[:, None]
        return out

    def _embed_chunk(self, table: np.ndarray, texts: list[str]) -> np.ndarray:
        """The normalized weighted sums of one chunk: tokenize (in Rust, batched), gather the rows,
        one ``np.add.reduceat`` over the concatenated pieces."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        filled = lengths > 0  # reduceat would give an empty segment its neighbour's row, not zeros
        if filled.any():
            ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
            starts = np.concatenate([[0], np.cumsum(lengths[filled])[:-1]])
            out[filled] = np.add.reduceat(table[ids], starts, axis=0)
        norms = np.linalg.norm(out, axis=1)
        # a text with no pieces (empty, or only characters the vocabulary lacks) gets a fixed unit
        # vector, as HashingEmbedder does, rather than zeros the router would divide by
        empty = norms < 1e-12
        out[empty] = 0.0
        out[empty, 0] = 1.0
        norms[empty] = 1.0
        out /= norms[:, None]
        return out

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        texts = check_texts(texts)
        table = self._ensure_table()
        if len(texts) <= self.chunk_size:  # the routed path: one prompt, no copying
            out = self._embed_one(table, texts[0]) if len(texts) == 1 else self._embed_chunk(table, texts)
            if progress is not None and texts:
                progress(len(texts))
            return out
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start:start + self.chunk_size]
            out[start:start + len(chunk)] = self._embed_chunk(table, chunk)
            if progress is not None:
                progress(len(chunk))
        return out
