"""Tokenizers of the text task: UTF-8 bytes, or a byte-level BPE trained on the train split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mixerlab.lightning_modules.record import write_atomic
from mixerlab.lightning_modules.tasks._corpus import Corpus, as_document

TOKENIZERS = ("bytes", "bpe")
MAX_VOCAB = 2**16  # token ids are stored as uint16


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


def load_tokenizer(kind: str, vocab_size: int, corpus: Corpus, cache_dir: Path) -> TextTokenizer:
    """Bytes, or the BPE for this corpus and vocabulary size, trained on the train split once."""
    if kind == "bytes":
        return TextTokenizer()
    path = cache_dir / "tokenizers" / f"bpe{vocab_size}-{corpus.key}.json"
    if not path.is_file():
        texts = (as_document(text) for _, text in corpus.splits["train"]())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, TextTokenizer.train_bpe(texts, vocab_size).bpe.to_str())
    return TextTokenizer(Tokenizer.from_file(str(path)))
