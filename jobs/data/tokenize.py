"""Tokenizers (Hugging Face tokenizers): train a byte-level BPE or load a tokenizer.json; encode."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.jobs.storage import filesystem
from lmforge.operator.api.dataset import TokenizerTraining

# Names other tokenizers give their end-of-text token, for tokenizer.json files we load.
_EOS_NAMES = ("<|eos|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def train(texts: Iterable[str], config: TokenizerTraining) -> Tokenizer:
    """A byte-level BPE: every byte is in the alphabet, so no text is ever out of vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=config.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load(uri: str, endpoint_url: str | None = None) -> Tokenizer:
    fs, path = filesystem(uri, endpoint_url)
    try:
        return Tokenizer.from_str(fs.cat_file(path).decode())
    except Exception as error:  # OSError from storage; tokenizers raises plain Exception
        raise ValueError(f"spec.tokenizer.uri: cannot load {uri}: {error}") from error


def eos_id(tokenizer: Tokenizer) -> int:
    for name in _EOS_NAMES:
        if (token := tokenizer.token_to_id(name)) is not None:
            return token
    raise ValueError(f"the tokenizer has no end-of-text token; add one of {', '.join(_EOS_NAMES)}")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def encode(
    tokenizer: Tokenizer, texts: list[str], eos: int, dtype: np.dtype, chunk_chars: int = 4 << 20
) -> tuple[np.ndarray, list[int]]:
    """All texts as one stream of token ids, each document followed by EOS; and their lengths.

    Texts go to the tokenizer (which encodes a batch on all cores) a few MB at a time: an
    Encoding keeps a string and offsets per token besides the id, ~70 bytes, so the whole
    corpus at once took several times its size in memory."""
    documents = []
    for batch in _batches(texts, chunk_chars):
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            ids = np.empty(len(encoding) + 1, dtype=dtype)
            ids[:-1], ids[-1] = encoding.ids, eos
            documents.append(ids)
    stream = np.concatenate(documents) if documents else np.empty(0, dtype=dtype)
    return stream, [len(d) for d in documents]


def _batches(texts: list[str], chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
