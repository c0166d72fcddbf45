"""Text language-modelling data: a corpus, a tokenizer and fixed-length blocks, all cached.

Sources (``source=``):

- ``"stdlib"`` (default): the ``.py`` files of the running interpreter's standard library, tests
  and ``site-packages`` excluded (see :func:`stdlib_corpus`). Every machine with the same Python
  build gets the same corpus, with nothing to download.
- a path: one text file (split into contiguous byte ranges) or a folder whose files match
  ``file_glob`` (split by file).
- ``"hf:<path>[:<config>]"``: a Hugging Face dataset through ``datasets.load_dataset``, or a folder
  written by ``save_to_disk`` (read with ``load_from_disk``); the text is in ``text_column``.

Folders are split by a hash of each file's relative path, so a file's split never depends on
which other files exist or on the order a filesystem lists them. HF datasets keep their own
train/validation/test splits when they have a validation split; otherwise their rows are cut
into contiguous ranges (neighbouring rows of one article stay in one split).

The pipeline has two cached stages per split, each a ``Dataset.from_generator`` with an explicit
fingerprint (a hash of what the data depends on, since the library cannot hash files that a
generator reads):

1. tokens: one row per document ``{"name", "ids", "n_bytes"}``; reused when only ``seq_len``
   changes, and the source of the exact bytes-per-token ratio;
2. blocks: one row per ``seq_len + 1`` tokens of the split's concatenated token stream, stride
   ``seq_len``, so every token but the first is a target exactly once (the tail shorter than a
   block is dropped).

Cache layout under ``cache_dir`` (default ``$MIXERLAB_CACHE`` or ``~/.cache/mixerlab``)::

    datasets/generator/default-fingerprint=<stage fingerprint>/0.0.0/generator-<split>.arrow
    datasets/<builder>/...                       load_dataset's own cache for hf: sources
    tokenizers/bpe<vocab size>-<corpus key>.json  BPE tokenizers, trained on the train split
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import itertools
import json
import os
import platform
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lightning_modules.io import write_atomic
from lightning_modules.storage import cached_dataset, default_cache_dir

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = (0.9, 0.05, 0.05)
DEFAULT_FILE_GLOB = ("*.txt", "*.md", "*.py")
TOKENIZERS = ("bytes", "bpe")
MAX_VOCAB = 2**16  # token ids are stored as uint16
# Bump when the layout or meaning of cached datasets changes, so old caches are not reused.
CACHE_VERSION = "1"
_HF_VAL_SPLITS = ("validation", "valid", "val", "dev")
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}
# Documents tokenised / chunked per step: bounds memory, lets BPE encode a batch in parallel.
DOC_BATCH = 64

# A split's documents as (name, text) pairs, read lazily: only a cold build calls it.
DocumentReader = Callable[[], Iterator[tuple[str, str]]]


def _sha256(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _active(fractions: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(split, start, stop)`` of each split with a positive fraction, as cumulative fractions."""
    edges = [0.0, *itertools.accumulate(fractions)]
    edges[-1] = 1.0
    return [
        (split, start, stop)
        for split, fraction, start, stop in zip(SPLITS, fractions, edges, edges[1:], strict=False)
        if fraction > 0
    ]


def assign_split(name: str, fractions: Sequence[float]) -> str:
    """The split of a document: a hash of its name, so it is stable across machines and runs."""
    u = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2**64
    return next(split for split, _, stop in _active(fractions) if u < stop)


def _contiguous(
    n: int, fractions: Sequence[float], cut: Callable[[int], int] = int
) -> list[tuple[str, int, int]]:
    """``(split, start, stop)`` ranges of ``n`` items in order; ``cut`` moves an inner edge."""
    return [
        (
            split,
            0 if start == 0 else cut(round(n * start)),
            n if stop == 1 else cut(round(n * stop)),
        )
        for split, start, stop in _active(fractions)
    ]


def _as_document(text: str) -> str:
    """Documents end with a newline, so concatenation never glues one's last line to the next."""
    return text if not text or text.endswith("\n") else text + "\n"


@dataclass
class Corpus:
    """A text corpus: what identifies it and a lazy reader per split."""

    fingerprint: dict[str, Any]
    splits: dict[str, DocumentReader]

    @property
    def key(self) -> str:
        """Short cache key of the fingerprint."""
        return _sha256(self.fingerprint)[:16]


# ---------------------------------------------------------------------------- local files
def _is_stdlib_test_or_vendored(part: str) -> bool:
    """Standard-library test code (``test/``, ``tests/``, ``idle_test/``, ``test_*.py``) and
    anything installed beside it: it is not the library, and test data holds odd encodings."""
    return part.startswith("test") or part.endswith("_test") or part in _SKIP_DIRS


def _scan(root: Path, patterns: Sequence[str], skip: Callable[[str], bool]) -> list[str]:
    """Sorted relative POSIX paths of files under ``root`` matching a pattern; a path with a
    skipped or hidden part is left out, and skipped folders are never walked."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or skip(d))]
        rel_folder = Path(folder).relative_to(root)
        for file in files:
            rel = (rel_folder / file).as_posix()
            if file.startswith(".") or skip(Path(file).stem):
                continue
            if any(fnmatch.fnmatchcase(rel, pattern) for pattern in patterns):
                found.append(rel)
    return sorted(found)


def _content_hash(root: Path, rel_paths: Sequence[str]) -> tuple[str, int]:
    """sha256 over each file's relative path, length and bytes; and the total byte count."""
    digest = hashlib.sha256()
    total = 0
    for rel in rel_paths:
        data = (root / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        digest.update(data)
        total += len(data)
    return digest.hexdigest(), total


def _read_files(root: Path, rel_paths: Sequence[str]) -> Iterator[tuple[str, str]]:
    for rel in rel_paths:
        yield rel, (root / rel).read_text(encoding="utf-8", errors="replace")


def _split_label(fractions: Sequence[float]) -> str:
    return "/".join(f"{f:g}" for f in fractions)


def _folder_corpus(
    root: Path,
    fractions: Sequence[float],
    patterns: Sequence[str],
    skip: Callable[[str], bool],
    identity: dict[str, str],
) -> Corpus:
    """Files under ``root``, split by :func:`assign_split` of their relative path."""
    rel_paths = _scan(root, patterns, skip)
    if not rel_paths:
        raise ValueError(
            f"no files under {root} match file_glob={list(patterns)}; "
            "pass a file_glob that matches your files, or another source"
        )
    sha, n_bytes = _content_hash(root, rel_paths)
    if n_bytes == 0:
        raise ValueError(f"the corpus at {root} is empty (every matching file has 0 bytes)")
    by_split: dict[str, list[str]] = {split: [] for split, _, _ in _active(fractions)}
    for rel in rel_paths:
        by_split[assign_split(rel, fractions)].append(rel)
    for split, files in by_split.items():
        if not files:
            raise ValueError(
                f"none of the {len(rel_paths)} files under {root} falls in the {split} split "
                f"(split={list(fractions)}, assigned by a hash of each path): use a folder with "
                f"more files, raise the {split} fraction, or pass a single file (split by bytes)"
            )
    return Corpus(
        fingerprint={
            **identity,
            "sha256": sha,
            "files": len(rel_paths),
            "bytes": n_bytes,
            "split": _split_label(fractions),
        },
        splits={
            split: functools.partial(_read_files, root, files) for split, files in by_split.items()
        },
    )


def stdlib_corpus(fractions: Sequence[float] = DEFAULT_SPLIT) -> Corpus:
    """The running interpreter's standard library ``.py`` files.

    Left out: every path with a part that starts with ``test`` or ends with ``_test`` (``test/``,
    ``tests/``, ``idlelib/idle_test/``, ``test_*.py``), ``site-packages``/``dist-packages``,
    ``__pycache__`` and hidden entries.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    identity = {"corpus": "stdlib", "python": platform.python_version()}
    return _folder_corpus(root, fractions, ("*.py",), _is_stdlib_test_or_vendored, identity)


def _read_byte_range(path: Path, start: int, stop: int) -> Iterator[tuple[str, str]]:
    data = path.read_bytes()[start:stop]
    yield f"{path.name}[{start}:{stop}]", data.decode("utf-8", errors="replace")


def _line_cut(data: bytes, position: int) -> int:
    """The first line start at or after ``position``, so no split begins mid-line."""
    if position <= 0 or position >= len(data) or data[position - 1 : position] == b"\n":
        return min(max(position, 0), len(data))
    newline = data.find(b"\n", position)
    return len(data) if newline < 0 else newline + 1


def _file_corpus(path: Path, fractions: Sequence[float]) -> Corpus:
    """One file cut into contiguous byte ranges (at line starts) by the split fractions."""
    data = path.read_bytes()
    if not data:
        raise ValueError(f"the corpus file {path} is empty; pass a file with text in it")
    return Corpus(
        fingerprint={
            "corpus": str(path),
            "sha256": hashlib.sha256(data).hexdigest(),
            "files": 1,
            "bytes": len(data),
            "split": _split_label(fractions),
        },
        splits={
            split: functools.partial(_read_byte_range, path, start, stop)
            for split, start, stop in _contiguous(
                len(data), fractions, functools.partial(_line_cut, data)
            )
        },
    )


# ---------------------------------------------------------------------------- hf: datasets
def _load_hf(path: str, config: str | None, cache_dir: Path) -> dict[str, datasets.Dataset]:
    """A local ``save_to_disk`` folder, or anything ``load_dataset`` reads, as named splits."""
    local = Path(path).expanduser()
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        loaded = datasets.load_from_disk(str(local))
    else:
        try:
            loaded = datasets.load_dataset(path, config, cache_dir=str(cache_dir / "datasets"))
        except (ConnectionError, FileNotFoundError) as error:
            raise ValueError(
                f"could not load the HF dataset {path!r} (config {config!r}): {error}. Check the "
                "name and config, or download it once with network access (offline runs read "
                "the local cache); a local folder needs data files or save_to_disk output"
            ) from error
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _read_rows(
    dataset: datasets.Dataset, column: str, label: str, start: int, stop: int
) -> Iterator[tuple[str, str]]:
    rows = dataset.select(range(start, stop)).select_columns([column])
    index = start
    for batch in rows.iter(batch_size=1000):
        for text in batch[column]:
            yield f"{label}[{index}]", text or ""
            index += 1


def _hf_corpus(spec: str, fractions: Sequence[float], text_column: str, cache_dir: Path) -> Corpus:
    """``hf:<path>[:<config>]``: native splits when a validation split exists, else contiguous
    row ranges of the train split (or of the only split)."""
    path, _, config = spec.partition(":")
    if not path:
        raise ValueError("source='hf:' names no dataset; use hf:<path>[:<config>]")
    loaded = _load_hf(path, config or None, cache_dir)
    for name, dataset in loaded.items():
        feature = dataset.features.get(text_column)
        if not (
            isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        ):
            raise ValueError(
                f"split {name!r} of {spec} has no text column {text_column!r} (columns: "
                f"{dataset.features}); set text_column to the column holding the text"
            )
    val_name = next((name for name in _HF_VAL_SPLITS if name in loaded), None)
    # (our split, dataset split, first row, stop row)
    ranges: list[tuple[str, str, int, int]]
    if "train" in loaded and val_name is not None:
        split_label = "native"
        native = {"train": "train", "val": val_name, "test": "test"}
        ranges = [
            (ours, theirs, 0, len(loaded[theirs]))
            for ours, theirs in native.items()
            if theirs in loaded
        ]
    else:
        if "train" not in loaded and len(loaded) != 1:
            raise ValueError(
                f"{spec} has splits {sorted(loaded)} but no 'train' split to divide; "
                "point source at a dataset with a train split"
            )
        split_label = _split_label(fractions)
        base = "train" if "train" in loaded else next(iter(loaded))
        ranges = [
            (ours, base, start, stop)
            for ours, start, stop in _contiguous(len(loaded[base]), fractions)
        ]
        for ours, _, start, stop in ranges:
            if start == stop:
                raise ValueError(
                    f"the {ours} split of {spec} gets no rows ({len(loaded[base])} rows, "
                    f"split={list(fractions)}): raise its fraction or use a larger dataset"
                )
    used = sorted({theirs for _, theirs, _, _ in ranges})
    n_bytes = sum(
        pc.sum(pc.binary_length(loaded[name].data.column(text_column))).as_py() or 0
        for name in used
    )
    fingerprint = {
        "corpus": f"hf:{spec}",
        "sha256": _sha256({name: loaded[name]._fingerprint for name in used}, text_column),
        "rows": sum(len(loaded[name]) for name in used),
        "bytes": n_bytes,
        "split": split_label,
    }
    return Corpus(
        fingerprint=fingerprint,
        splits={
            ours: functools.partial(_read_rows, loaded[theirs], text_column, theirs, start, stop)
            for ours, theirs, start, stop in ranges
        },
    )


def load_corpus(
    source: str | os.PathLike,
    *,
    split: Sequence[float] = DEFAULT_SPLIT,
    text_column: str = "text",
    file_glob: Sequence[str] = DEFAULT_FILE_GLOB,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """The corpus named by ``source``: ``"stdlib"``, ``"hf:<path>[:<config>]"``, a file or a
    folder (see the module docstring)."""
    source = str(source)
    if source == "stdlib":
        return stdlib_corpus(split)
    if source.startswith("hf:"):
        cache = Path(cache_dir if cache_dir is not None else default_cache_dir())
        return _hf_corpus(source[3:], split, text_column, cache)
    path = Path(source).expanduser()
    if path.is_file():
        return _file_corpus(path.resolve(), split)
    if path.is_dir():
        root = path.resolve()
        return _folder_corpus(
            root, split, file_glob, lambda part: part in _SKIP_DIRS, {"corpus": str(root)}
        )
    raise ValueError(
        f"source {source!r} is not 'stdlib', 'hf:<path>[:<config>]', or an existing file or "
        "folder; fix the path or pick one of those"
    )


# ---------------------------------------------------------------------------- tokenizers
class TextTokenizer:
    """UTF-8 bytes (vocab 256), or a byte-level BPE; both lossless on any text."""

    def __init__(self, bpe: Tokenizer | None = None) -> None:
        self.bpe = bpe

    @property
    def name(self) -> str:
        return "bytes" if self.bpe is None else f"bpe{self.vocab_size}"

    @property
    def vocab_size(self) -> int:
        return 256 if self.bpe is None else self.bpe.get_vocab_size()

    @property
    def sha256(self) -> str:
        """Identifies the exact vocabulary and merges (cached token ids depend on them)."""
        return (
            "bytes" if self.bpe is None else hashlib.sha256(self.bpe.to_str().encode()).hexdigest()
        )

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids as uint16 arrays; BPE encodes the batch on all cores."""
        if self.bpe is None:
            return [np.frombuffer(t.encode(), dtype=np.uint8).astype(np.uint16) for t in texts]
        return [np.asarray(e.ids, dtype=np.uint16) for e in self.bpe.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.bpe is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self.bpe.decode(ids)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
        """A GPT-2 style byte-level BPE: every byte is in the base alphabet, so any text encodes."""
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer=trainer)
        return cls(bpe)


def _load_tokenizer(kind: str, vocab_size: int, corpus: Corpus, cache_dir: Path) -> TextTokenizer:
    """Bytes, or the BPE for this corpus and vocabulary size, trained on the train split once."""
    if kind == "bytes":
        return TextTokenizer()
    path = cache_dir / "tokenizers" / f"bpe{vocab_size}-{corpus.key}.json"
    if not path.is_file():
        texts = (_as_document(text) for _, text in corpus.splits["train"]())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, TextTokenizer.train_bpe(texts, vocab_size).bpe.to_str())
    return TextTokenizer(Tokenizer.from_file(str(path)))


# ---------------------------------------------------------------------------- cached stages
def _token_rows(read: DocumentReader, tokenizer: TextTokenizer) -> Iterator[dict[str, Any]]:
    documents = read()
    while chunk := list(itertools.islice(documents, DOC_BATCH)):
        names = [name for name, _ in chunk]
        texts = [_as_document(text) for _, text in chunk]
        for name, text, ids in zip(names, texts, tokenizer.encode_batch(texts), strict=True):
            yield {"name": name, "ids": ids, "n_bytes": len(text.encode())}


def _block_rows(tokens: datasets.Dataset, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of ``seq_len + 1`` tokens with stride ``seq_len`` over the split's token stream."""
    buffer = np.empty(0, dtype=np.uint16)
    for batch in tokens.select_columns(["ids"]).with_format("numpy").iter(batch_size=DOC_BATCH):
        buffer = np.concatenate([buffer, *batch["ids"]])
        n = (len(buffer) - 1) // seq_len
        for i in range(n):
            yield {"ids": buffer[i * seq_len : (i + 1) * seq_len + 1]}
        buffer = buffer[n * seq_len :]


def _cached(
    generator: Callable[[], Iterator[dict[str, Any]]], fingerprint: str, split: str, cache_dir: Path
) -> datasets.Dataset:
    """One split's stage, cached under ``fingerprint`` (see :func:`cached_dataset`).

    The generator must yield at least one row. Features are inferred from its uint16 arrays
    (``ids`` becomes ``list<uint16>``): declaring them makes ``datasets`` turn every array into
    Python scalars, which builds about 7x slower.
    """
    return cached_dataset(
        generator, cache_dir=cache_dir, fingerprint=fingerprint, split=datasets.NamedSplit(split)
    )


def _num_tokens(tokens: datasets.Dataset) -> int:
    return pc.sum(pc.list_value_length(tokens.data.column("ids"))).as_py() or 0


def _num_bytes(tokens: datasets.Dataset) -> int:
    return pc.sum(tokens.data.column("n_bytes")).as_py() or 0


# ---------------------------------------------------------------------------- loading
class _BlockBatches(TorchDataset):
    """The blocks of a split, fetched a whole batch per Arrow ``take`` (``__getitems__``), so
    there is no per-row Python work or stacking in the loader."""

    def __init__(self, blocks: datasets.Dataset) -> None:
        self.blocks = blocks.with_format("torch", columns=["ids"])

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Tensor:
        return self.blocks[index]["ids"]

    def __getitems__(self, indices: list[int]) -> Tensor:
        return self.blocks[indices]["ids"]


def _lm_batch(ids: Tensor) -> dict[str, Tensor]:
    """Next-token pairs from (B, seq_len + 1) blocks; every position is scored."""
    inputs = ids[:, :-1].contiguous()
    return {
        "input": inputs,
        "target": ids[:, 1:].contiguous(),
        "mask": torch.ones_like(inputs, dtype=torch.bool),
    }


class TextLMDataModule(pl.LightningDataModule):
    """Next-token prediction on real text, identical for every mixer.

    ``prepare_data`` reads the corpus, trains the BPE (if any) and writes the cached datasets;
    ``setup`` loads them (memory-mapped) and sets the attributes the train app reads:
    ``task_type``, ``vocab_size``, ``max_len``, ``num_classes``, ``bytes_per_token`` (val-split
    bytes / val-split tokens: ``val/bpb`` is then the val loss per byte of the val text, which
    compares across tokenizers; a BPE trained on the train split compresses that split best, so
    its ratio would understate val bits per byte), ``fingerprint``,
    ``val_set_names``, and ``stats`` (documents, bytes, tokens and blocks per split).
    """

    task_type = "lm"
    num_classes = None

    def __init__(
        self,
        *,
        source: str = "stdlib",
        seq_len: int = 256,
        batch_size: int = 16,
        tokenizer: str = "bytes",
        bpe_vocab_size: int = 1024,
        split: Sequence[float] = DEFAULT_SPLIT,
        text_column: str = "text",
        file_glob: str | Sequence[str] = DEFAULT_FILE_GLOB,
        max_train_tokens: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        for name, value in {"seq_len": seq_len, "batch_size": batch_size}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={tokenizer!r} is unknown; use one of {list(TOKENIZERS)}")
        if tokenizer == "bpe" and not 256 < bpe_vocab_size <= MAX_VOCAB:
            raise ValueError(
                f"bpe_vocab_size={bpe_vocab_size} must be in (256, {MAX_VOCAB}]: the 256 byte "
                "tokens come first and ids are stored as uint16"
            )
        fractions = tuple(float(f) for f in split)
        if (
            len(fractions) != 3
            or min(fractions) < 0
            or fractions[0] <= 0
            or fractions[1] <= 0
            or abs(sum(fractions) - 1) > 1e-6
        ):
            raise ValueError(
                f"split={list(split)} must be three fractions (train, val, test) summing to 1, "
                "train and val positive (test may be 0), e.g. [0.9, 0.05, 0.05]"
            )
        if max_train_tokens is not None and max_train_tokens < seq_len:
            raise ValueError(
                f"max_train_tokens={max_train_tokens} is less than one block (seq_len={seq_len}); "
                "raise it or set it to null for the whole train split"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.source = str(source)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.tokenizer_kind = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.split = fractions
        self.text_column = text_column
        self.file_glob = (file_glob,) if isinstance(file_glob, str) else tuple(file_glob)
        self.max_train_tokens = max_train_tokens
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir())

        self.max_len = seq_len
        self.val_set_names = ["val"]
        self.vocab_size: int | None = None
        self.bytes_per_token: float | None = None
        self.fingerprint: dict[str, Any] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.tokenizer: TextTokenizer | None = None
        self.tokens: dict[str, datasets.Dataset] = {}
        self.blocks: dict[str, datasets.Dataset] = {}
        self._corpus: Corpus | None = None

    @property
    def corpus(self) -> Corpus:
        """The corpus (scanned and hashed once per process)."""
        if self._corpus is None:
            self._corpus = load_corpus(
                self.source,
                split=self.split,
                text_column=self.text_column,
                file_glob=self.file_glob,
                cache_dir=self.cache_dir,
            )
        return self._corpus

    def _build(
        self,
    ) -> tuple[TextTokenizer, dict[str, datasets.Dataset], dict[str, datasets.Dataset]]:
        """Tokenizer, tokens and blocks of every split: from the cache, built where missing."""
        corpus = self.corpus
        tokenizer = _load_tokenizer(
            self.tokenizer_kind, self.bpe_vocab_size, corpus, self.cache_dir
        )
        tokens, blocks = {}, {}
        for split, read in corpus.splits.items():
            key = _sha256(CACHE_VERSION, corpus.key, tokenizer.sha256, split)
            tokens[split] = _cached(
                functools.partial(_token_rows, read, tokenizer),
                key[:16],
                split,
                self.cache_dir,
            )
            n_tokens = _num_tokens(tokens[split])
            if n_tokens < self.seq_len + 1:
                raise ValueError(
                    f"the {split} split of {corpus.fingerprint['corpus']} has {n_tokens} tokens "
                    f"({len(tokens[split])} documents), fewer than seq_len+1={self.seq_len + 1}: "
                    f"lower seq_len, give {split} a larger fraction of split={list(self.split)}, "
                    "or use a larger corpus"
                )
            blocks[split] = _cached(
                functools.partial(_block_rows, tokens[split], self.seq_len),
                _sha256(key, self.seq_len)[:16],
                split,
                self.cache_dir,
            )
        return tokenizer, tokens, blocks

    def prepare_data(self) -> None:
        self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.blocks:
            return
        self.tokenizer, self.tokens, blocks = self._build()
        if self.max_train_tokens is not None:
            n = min(len(blocks["train"]), self.max_train_tokens // self.seq_len)
            blocks["train"] = blocks["train"].select(range(n))
        if len(blocks["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(blocks['train'])} blocks of seq_len={self.seq_len}, "
                f"fewer than batch_size={self.batch_size}; lower batch_size or seq_len, or raise "
                "max_train_tokens"
            )
        self.blocks = blocks
        self.vocab_size = self.tokenizer.vocab_size
        self.stats = {
            split: {
                "documents": len(self.tokens[split]),
                "bytes": _num_bytes(self.tokens[split]),
                "tokens": _num_tokens(self.tokens[split]),
                "blocks": len(blocks[split]),
            }
            for split in blocks
        }
        self.bytes_per_token = self.stats["val"]["bytes"] / self.stats["val"]["tokens"]
        self.fingerprint = {**self.corpus.fingerprint, "tokenizer": self.tokenizer.name}

    def documents(self, split: str) -> list[str]:
        """Names of the documents in a split (file paths, byte ranges or dataset rows)."""
        return list(self.tokens[split]["name"])

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        if split not in self.blocks:
            raise ValueError(
                f"no {split} split: call setup() first, or give it a positive fraction in split"
            )
        return DataLoader(
            _BlockBatches(self.blocks[split]),
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            collate_fn=_lm_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def measure_loader_throughput(dm: TextLMDataModule, n_batches: int) -> float:
    """Tokens/s of the train loader alone, after its first batch (worker start-up excluded)."""
    loader = dm.train_dataloader()
    batches = iter(loader)
    next(batches)
    tokens = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        tokens += batch["target"].numel()
    return tokens / (time.perf_counter() - start)
