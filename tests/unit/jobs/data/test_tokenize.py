import numpy as np
import pytest
from tokenizers import Tokenizer, models

from lmforge.jobs.data import tokenize
from lmforge.operator.api.dataset import TokenizerTraining

TEXTS = ["def add(a, b):\n    return a + b\n", "print('héllo wörld')\n"] * 20


def test_trained_tokenizer_round_trips_bytes_and_puts_special_tokens_first():
    tokenizer = tokenize.train(TEXTS, TokenizerTraining(vocab_size=300, min_frequency=1))
    assert [tokenizer.id_to_token(i) for i in range(3)] == ["<|bos|>", "<|eos|>", "<|pad|>"]
    assert tokenize.eos_id(tokenizer) == 1
    unseen = "zebra ∑ 🙂"  # byte-level: nothing is out of vocabulary
    assert tokenizer.decode(tokenizer.encode(unseen).ids) == unseen
    assert tokenizer.get_vocab_size() <= 300


def test_encode_puts_eos_after_each_document_in_chunks_or_not():
    tokenizer = tokenize.train(TEXTS, TokenizerTraining(vocab_size=300, min_frequency=1))
    stream, lengths = tokenize.encode(tokenizer, TEXTS[:3], 1, np.dtype(np.uint16))
    assert len(stream) == sum(lengths) and stream[lengths[0] - 1] == 1 and stream[-1] == 1
    chunked, same = tokenize.encode(tokenizer, TEXTS[:3], 1, np.dtype(np.uint16), chunk_chars=10)
    assert (chunked == stream).all() and same == lengths


def test_load_from_a_uri_and_missing_eos(tmp_path):
    trained = tokenize.train(TEXTS, TokenizerTraining(vocab_size=300, min_frequency=1))
    trained.save(str(tmp_path / "tokenizer.json"))
    loaded = tokenize.load((tmp_path / "tokenizer.json").as_uri())
    assert loaded.encode(TEXTS[0]).ids == trained.encode(TEXTS[0]).ids
    with pytest.raises(ValueError, match=r"spec\.tokenizer\.uri: cannot load"):
        tokenize.load((tmp_path / "missing.json").as_uri())
    with pytest.raises(ValueError, match="has no end-of-text token"):
        tokenize.eos_id(Tokenizer(models.BPE()))


@pytest.mark.parametrize(("vocab", "dtype"), [(65536, np.uint16), (65537, np.uint32)])
def test_token_dtype(vocab, dtype):
    assert tokenize.token_dtype(vocab) == dtype
