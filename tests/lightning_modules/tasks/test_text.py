"""The text task: sources, splits, fingerprints, cache reuse, batches and tokenizers."""

from __future__ import annotations

import platform
import random
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import torch

from mixerlab.lightning_modules.tasks import measure_loader_throughput, text
from mixerlab.lightning_modules.tasks._corpus import assign_split
from mixerlab.lightning_modules.tasks._tokenizer import TextTokenizer
from mixerlab.lightning_modules.tasks.text import TextLMDataModule

SPLIT = (0.6, 0.2, 0.2)
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dogs",
    "while",
    "seven",
    "wizards",
    "box",
    "jolly",
    "kings",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hub (it is unreachable here anyway): fail fast instead of retrying."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()


def _text(seed: int, n_lines: int = 30) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choices(WORDS, k=8)) + f" {seed}\n" for _ in range(n_lines))


def _folder(root: Path, n_files: int = 30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (root / f"doc{i:02d}.txt").write_text(_text(i))
    return root


def _dm(source: object, cache: Path, **kwargs) -> TextLMDataModule:
    kwargs = {"seq_len": 32, "batch_size": 4, "split": SPLIT, **kwargs}
    dm = TextLMDataModule(source=str(source), cache_dir=str(cache), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _splits(dm: TextLMDataModule) -> dict[str, list[str]]:
    return {split: dm.documents(split) for split in dm.blocks}


def test_folder_is_split_by_file_deterministically(tmp_path: Path) -> None:
    corpus = _folder(tmp_path / "corpus")
    first = _splits(_dm(corpus, tmp_path / "cache_a"))
    assert first == _splits(_dm(corpus, tmp_path / "cache_b"))
    names = [name for files in first.values() for name in files]
    assert sorted(names) == sorted(p.name for p in corpus.iterdir())  # each file exactly once
    for split, files in first.items():
        assert files and all(assign_split(name, SPLIT) == split for name in files)
    # A file's split depends on its path alone, not on the other files.
    (corpus / "extra.txt").write_text(_text(99))
    grown = _splits(_dm(corpus, tmp_path / "cache_c"))
    assert {s: [n for n in files if n != "extra.txt"] for s, files in grown.items()} == first


def test_fingerprint_is_stable_and_follows_content(tmp_path: Path) -> None:
    corpus = _folder(tmp_path / "corpus")
    dm = _dm(corpus, tmp_path / "cache")
    fp = dm.fingerprint
    assert fp == _dm(corpus, tmp_path / "cache").fingerprint
    assert fp["corpus"] == str(corpus.resolve()) and fp["tokenizer"] == "bytes"
    assert fp["files"] == 30 and fp["bytes"] == sum(p.stat().st_size for p in corpus.iterdir())
    val_file = dm.documents("val")[0]
    with (corpus / val_file).open("a") as file:
        file.write("one more line\n")
    changed = _dm(corpus, tmp_path / "cache")
    assert changed.fingerprint["sha256"] != fp["sha256"]
    # Same cache folder, new content: the data is rebuilt, not served stale.
    assert changed.stats["val"]["bytes"] == dm.stats["val"]["bytes"] + len("one more line\n")


def test_second_setup_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _folder(tmp_path / "corpus")
    first = _dm(corpus, tmp_path / "cache")
    calls = []
    encode_batch = TextTokenizer.encode_batch

    def counting(self: TextTokenizer, texts: list[str]) -> list:
        calls.append(len(texts))
        return encode_batch(self, texts)

    monkeypatch.setattr(TextTokenizer, "encode_batch", counting)
    again = _dm(corpus, tmp_path / "cache")
    assert calls == []
    for split in first.blocks:
        assert again.blocks[split].cache_files == first.blocks[split].cache_files
    # Another seq_len re-chunks the cached tokens without tokenising again.
    longer = _dm(corpus, tmp_path / "cache", seq_len=48)
    assert calls == []
    assert longer.blocks["train"].cache_files != first.blocks["train"].cache_files
    assert longer.tokens["train"].cache_files == first.tokens["train"].cache_files


def test_batches_are_shifted_blocks_of_the_token_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text, "DOC_BATCH", 3)  # blocks must run on across document batches
    corpus = _folder(tmp_path / "corpus")
    dm = _dm(corpus, tmp_path / "cache")
    for split in dm.blocks:
        stream = "".join((corpus / name).read_text() for name in dm.documents(split)).encode()
        blocks = [bytes(ids) for ids in dm.blocks[split]["ids"]]
        n = (len(stream) - 1) // 32  # every token but the first is a target exactly once
        assert blocks == [stream[i * 32 : i * 32 + 33] for i in range(n)], split
        assert dm.stats[split]["tokens"] == dm.stats[split]["bytes"] == len(stream)
    batch = next(iter(dm.val_dataloader()))  # not shuffled: the first blocks, in order
    assert set(batch) == {"input", "target", "mask"}
    assert batch["input"].shape == batch["target"].shape == (4, 32)
    assert batch["input"].dtype == batch["target"].dtype == torch.long
    assert batch["mask"].dtype == torch.bool and batch["mask"].all()
    first = dm.blocks["val"].with_format("torch")["ids"][:4]
    assert torch.equal(batch["input"], first[:, :-1])
    assert torch.equal(batch["target"], first[:, 1:])
    assert sum(s["bytes"] for s in dm.stats.values()) == dm.fingerprint["bytes"]
    assert (dm.task_type, dm.vocab_size, dm.max_len, dm.num_classes) == ("lm", 256, 32, None)
    assert dm.bytes_per_token == 1.0 and dm.val_set_names == ["val"]
    assert (dm.name, dm.causal) == ("text", True)
    dm.check_ready()


def test_train_loader_is_shuffled_by_seed(tmp_path: Path) -> None:
    corpus = _folder(tmp_path / "corpus")

    def first_inputs(seed: int) -> torch.Tensor:
        dm = _dm(corpus, tmp_path / "cache", seed=seed)
        batches = list(dm.train_dataloader())
        assert all(b["input"].shape == (4, 32) for b in batches)  # drop_last: fixed shapes
        assert len(batches) == len(dm.blocks["train"]) // 4
        return batches[0]["input"]

    assert torch.equal(first_inputs(0), first_inputs(0))
    assert not torch.equal(first_inputs(0), first_inputs(1))


def test_single_file_is_split_into_line_aligned_byte_ranges(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    data = "".join(_text(i) for i in range(10))
    path.write_text(data)
    dm = _dm(path, tmp_path / "cache", split=(0.8, 0.2, 0.0))
    assert set(dm.blocks) == {"train", "val"}
    (train,), (val,) = dm.documents("train"), dm.documents("val")
    cut = len(data.encode()) * 8 // 10
    assert train.startswith("book.txt[0:") and val.endswith(f":{len(data.encode())}]")
    edge = int(val.split("[")[1].split(":")[0])
    assert train == f"book.txt[0:{edge}]" and edge >= cut and data[edge - 1] == "\n"
    assert dm.stats["train"]["bytes"] + dm.stats["val"]["bytes"] == len(data.encode())
    with pytest.raises(ValueError, match="no test split"):
        dm.test_dataloader()


def test_hf_save_to_disk_folder_keeps_its_splits(tmp_path: Path) -> None:
    rows = {name: [_text(i + 10 * k) for i in range(6)] for k, name in enumerate(["tr", "va"])}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"content": rows["tr"], "id": list(range(6))}),
            "validation": datasets.Dataset.from_dict({"content": rows["va"], "id": list(range(6))}),
        }
    ).save_to_disk(str(tmp_path / "saved"))
    dm = _dm(f"hf:{tmp_path / 'saved'}", tmp_path / "cache", text_column="content")
    assert dm.fingerprint["corpus"] == f"hf:{tmp_path / 'saved'}"
    assert dm.fingerprint["split"] == "native" and dm.fingerprint["rows"] == 12
    assert dm.documents("val") == [f"validation[{i}]" for i in range(6)]
    assert dm.stats["val"]["bytes"] == sum(len(t) for t in rows["va"])
    assert "test" not in dm.blocks
    with pytest.raises(ValueError, match="no text column 'text'"):
        _dm(f"hf:{tmp_path / 'saved'}", tmp_path / "cache")


def test_hf_data_files_folder_is_split_into_row_ranges(tmp_path: Path) -> None:
    folder = tmp_path / "jsonl"
    folder.mkdir()
    texts = [_text(i, n_lines=5) for i in range(40)]
    datasets.Dataset.from_dict({"text": texts}).to_json(str(folder / "part.jsonl"))
    dm = _dm(f"hf:{folder}", tmp_path / "cache")
    assert dm.fingerprint["split"] == "0.6/0.2/0.2"
    splits = _splits(dm)
    assert splits["train"] == [f"train[{i}]" for i in range(24)]
    assert splits["val"] == [f"train[{i}]" for i in range(24, 32)]
    assert splits["test"] == [f"train[{i}]" for i in range(32, 40)]


def test_bpe_is_trained_on_the_train_split_only(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        name = f"doc{i:02d}.txt"
        word = "trainword" if assign_split(name, SPLIT) == "train" else "heldoutzq"
        (corpus / name).write_text(_text(i) + f"{word} " * 200 + "\n")
    dm = _dm(corpus, tmp_path / "cache", tokenizer="bpe", bpe_vocab_size=300)
    vocab = dm.tokenizer.bpe.get_vocab()
    assert any("trainword" in token for token in vocab)
    assert not any("heldout" in token or "ldoutz" in token for token in vocab)
    assert dm.vocab_size == len(vocab) <= 300 and dm.fingerprint["tokenizer"] == f"bpe{len(vocab)}"
    train, val = dm.stats["train"], dm.stats["val"]
    assert train["bytes"] / train["tokens"] > 1.5
    # val/bpb divides by the val text's ratio: held-out words compress worse than train text
    assert dm.bytes_per_token == val["bytes"] / val["tokens"] < train["bytes"] / train["tokens"]
    text = "héllo wörld ✓ trainword\n\tdef f(): pass\n"
    assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text
    assert next(iter(dm.train_dataloader()))["input"].max() < dm.vocab_size
    assert len(list((tmp_path / "cache" / "tokenizers").glob("bpe300-*.json"))) == 1


def test_max_train_tokens_caps_the_train_split(tmp_path: Path) -> None:
    corpus = _folder(tmp_path / "corpus")
    dm = _dm(corpus, tmp_path / "cache", max_train_tokens=5 * 32 + 7)
    assert len(dm.blocks["train"]) == 5
    assert len(dm.blocks["val"]) == (dm.stats["val"]["tokens"] - 1) // 32  # eval sets untouched
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _dm(corpus, tmp_path / "cache", max_train_tokens=3 * 32)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda tmp: {"source": tmp / "missing"}, "existing file or folder"),
        (lambda tmp: {"source": tmp / "corpus", "file_glob": "*.rst"}, "match file_glob"),
        (lambda tmp: {"source": tmp / "corpus", "seq_len": 10_000}, "fewer than seq_len"),
        (lambda tmp: {"source": tmp / "corpus", "tokenizer": "wordpiece"}, "tokenizer='wordpiece'"),
        (lambda tmp: {"source": tmp / "corpus", "bpe_vocab_size": 100, "tokenizer": "bpe"}, "256"),
        (lambda tmp: {"source": tmp / "corpus", "split": (0.9, 0.1)}, "three fractions"),
        (lambda tmp: {"source": tmp / "corpus", "split": (0.5, 0.0, 0.5)}, "three fractions"),
        (lambda tmp: {"source": tmp / "corpus", "seq_len": 0}, "seq_len must be"),
        (lambda tmp: {"source": tmp / "empty.txt"}, "is empty"),
        (lambda tmp: {"source": "hf:no_such_dataset_zz"}, "could not load the HF dataset"),
        (lambda tmp: {"source": tmp / "one"}, "falls in the"),
    ],
)
def test_bad_input_raises_a_clear_error(tmp_path: Path, setup, message: str) -> None:
    _folder(tmp_path / "corpus")
    _folder(tmp_path / "one", n_files=1)
    (tmp_path / "empty.txt").write_text("")
    kwargs = setup(tmp_path)
    with pytest.raises(ValueError, match=message):
        _dm(kwargs.pop("source"), tmp_path / "cache", **kwargs)


@pytest.mark.slow
def test_stdlib_is_the_default_corpus(tmp_path: Path) -> None:
    dm = TextLMDataModule(seq_len=256, batch_size=16, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    fp = dm.fingerprint
    assert fp["corpus"] == "stdlib" and fp["python"] == platform.python_version()
    assert fp["files"] > 100 and fp["bytes"] > 1_000_000 and len(fp["sha256"]) == 64
    splits = _splits(dm)
    names = [name for files in splits.values() for name in files]
    assert len(names) == len(set(names)) == fp["files"]
    assert "os.py" in names and "json/decoder.py" in names
    for name in names:
        parts = Path(name).with_suffix("").parts
        assert not any(p.startswith("test") or p.endswith("_test") for p in parts), name
        assert "site-packages" not in parts and name.endswith(".py")
    assert dm.stats["val"]["documents"] < dm.stats["train"]["documents"] / 5
    assert measure_loader_throughput(dm, n_batches=5) > 0
