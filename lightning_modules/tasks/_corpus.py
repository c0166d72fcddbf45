"""Corpus sources of the text task: the standard library, a file, a folder, an HF dataset.

A :class:`Corpus` is what identifies a text (its fingerprint, since ``datasets`` cannot hash
files that a generator reads) and a lazy reader of each split's documents. Folders are split by
a hash of each file's relative path, so a file's split never depends on which other files exist
or on the order a filesystem lists them. HF datasets keep their own train/validation/test splits
when they have a validation split; otherwise their rows are cut into contiguous ranges
(neighbouring rows of one article stay in one split).
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc

from mixerlab.lightning_modules.tasks._datasets_adapter import dataset_fingerprint
from mixerlab.lightning_modules.tasks._loading import default_cache_dir

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = (0.9, 0.05, 0.05)
DEFAULT_FILE_GLOB = ("*.txt", "*.md", "*.py")
_HF_VAL_SPLITS = ("validation", "valid", "val", "dev")
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}

# A split's documents as (name, text) pairs, read lazily: only a cold build calls it.
DocumentReader = Callable[[], Iterator[tuple[str, str]]]


def json_sha256(*parts: Any) -> str:
    """sha256 hex digest of JSON-serialisable ``parts``: a cache key of what data depends on."""
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


def as_document(text: str) -> str:
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
        return json_sha256(self.fingerprint)[:16]


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
        "sha256": json_sha256(
            {name: dataset_fingerprint(loaded[name]) for name in used}, text_column
        ),
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
