"""Tokenizer, corpus preparation from local archives, and the token loaders' errors."""

import dataclasses
import inspect
import io
import json
import re
import tarfile

import numpy as np
import pytest

from muonlib import data
from muonlib.data import CORPORA, EOT, GPT2_FILES, TokenBatches, evaluation_batches, gpt2_tokenizer, load_tokens, prepare


def test_pinned_hashes_are_the_ones_tiktoken_pins_for_gpt2():
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)
    assert re.search(r'vocab_bpe_hash="([0-9a-f]{64})"', source).group(1) == GPT2_FILES["vocab.bpe"]
    assert re.search(r'encoder_json_hash="([0-9a-f]{64})"', source).group(1) == GPT2_FILES["encoder.json"]


def test_tokenizer_is_gpt2_and_round_trips():
    enc = gpt2_tokenizer()
    assert enc.n_vocab == 50257 and enc.eot_token == EOT
    assert enc.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's ids
    text = "Muon orthogonalises: naïve café, 東京, emoji 🙂\n\ttabs  and  spaces"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_tokenizer_refuses_files_with_the_wrong_hash(monkeypatch):
    monkeypatch.setitem(data.GPT2_FILES, "vocab.bpe", "0" * 64)
    gpt2_tokenizer.cache_clear()
    try:
        with pytest.raises(ValueError, match="not GPT-2's"):
            gpt2_tokenizer()
    finally:
        gpt2_tokenizer.cache_clear()


def make_tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


BOOK_A = "The first book.\nIt has lines.\n" * 40
BOOK_B = "Caesar: Brutus, thou art mine é.\n" * 40


@pytest.fixture
def gutenberg(tmp_path):
    archive = make_tar(tmp_path / "g.tgz", {
        "package/gutenberg/README": b"not a book",
        "package/gutenberg/a.txt": BOOK_A.replace("\n", "\r\n").encode(),  # CRLF
        "package/gutenberg/b.txt": BOOK_B.encode("latin-1"),  # not valid UTF-8
    })
    corpus = dataclasses.replace(CORPORA["gutenberg"], sha256=data.sha256_file(archive))
    manifest = prepare("gutenberg", tmp_path, archive, corpus)
    return tmp_path, manifest


def test_prepare_gutenberg_from_a_local_tarball(gutenberg):
    root, manifest = gutenberg
    enc = gpt2_tokenizer()
    train, val = load_tokens("gutenberg", "train", root), load_tokens("gutenberg", "val", root)
    assert [d["name"] for d in manifest["documents"]] == ["a", "b"]
    assert manifest["splits"]["train"]["tokens"] == len(train) and manifest["splits"]["val"]["tokens"] == len(val)
    # each document = its train part then its held-out tail; CRLF became LF, Latin-1 decoded
    joined = np.concatenate([train, val])
    assert len(joined) == sum(d["tokens"] for d in manifest["documents"])
    a_tokens = enc.encode_ordinary(BOOK_A) + [EOT]
    a_cut = len(a_tokens) - int(len(a_tokens) * data.VAL_FRACTION)
    assert train[:a_cut].tolist() == a_tokens[:a_cut]
    assert val[: len(a_tokens) - a_cut].tolist() == a_tokens[a_cut:]
    assert "é" in enc.decode(train[a_cut:].tolist()) and "\r" not in enc.decode(train.tolist())


def test_prepare_refuses_an_archive_with_the_wrong_hash(tmp_path):
    archive = make_tar(tmp_path / "g.tgz", {"package/gutenberg/a.txt": b"text"})
    with pytest.raises(ValueError, match="sha256"):
        prepare("gutenberg", tmp_path, archive)


def test_sotu_and_tinystories_loaders_on_local_files(tmp_path):
    speech = {"year": 1790, "name": "George Washington", "party": "none", "text": "Fellow-Citizens. " * 50}
    archive = make_tar(tmp_path / "s.tgz", {"package/data/1790_george_washington_n.json": json.dumps(speech).encode()})
    prepare("sotu", tmp_path, archive, dataclasses.replace(CORPORA["sotu"], sha256=data.sha256_file(archive)))
    assert len(load_tokens("sotu", "train", tmp_path)) > 0

    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "TinyStoriesV2-GPT4-train.txt").write_text("Once upon a time.\n<|endoftext|>\nA cat sat.\n<|endoftext|>\nThe end.\n")
    (folder / "TinyStoriesV2-GPT4-valid.txt").write_text("Lily ran.\n<|endoftext|>\n")
    manifest = prepare("tinystories", tmp_path, folder)
    enc = gpt2_tokenizer()
    assert len(manifest["documents"]) == 4
    assert load_tokens("tinystories", "val", tmp_path).tolist() == enc.encode_ordinary("Lily ran.") + [EOT]
    train = load_tokens("tinystories", "train", tmp_path).tolist()
    assert train.count(EOT) == 3 and enc.decode(train).split("<|endoftext|>")[:3] == ["Once upon a time.", "A cat sat.", "The end."]


def test_loaders_explain_missing_truncated_altered_and_foreign_files(gutenberg):
    root, _ = gutenberg
    with pytest.raises(FileNotFoundError, match="prepare sotu"):
        load_tokens("sotu", "train", root)
    path = root / "cache" / "gutenberg" / "val.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        load_tokens("gutenberg", "val", root)
    path.write_bytes(bytes([raw[0] ^ 1]) + raw[1:])
    with pytest.raises(ValueError, match="sha256"):
        load_tokens("gutenberg", "val", root)
    load_tokens("gutenberg", "val", root, verify=False)  # size is right: only the hash notices
    manifest_path = root / "cache" / "gutenberg" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["vocab_size"] = 100277
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="tokenized with"):
        load_tokens("gutenberg", "train", root)
    manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_tokens("gutenberg", "train", root)


def test_batches_depend_only_on_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = TokenBatches(tokens, batch_size=4, context=16, seed=3)
    x, y = batches(7)
    assert x.shape == (4, 16) and x.dtype.is_floating_point is False
    assert (y[:, :-1] == x[:, 1:]).all() and (y == x + 1).all()
    assert (TokenBatches(tokens, 4, 16, 3)(7)[0] == x).all()
    assert not (batches(8)[0] == x).all() and not (TokenBatches(tokens, 4, 16, 4)(7)[0] == x).all()
    with pytest.raises(ValueError, match="too few"):
        TokenBatches(tokens[:17], 4, 16, 0)


def test_evaluation_batches_are_consecutive_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = evaluation_batches(tokens, batch_size=4, context=10, max_tokens=95)
    xs = np.concatenate([x.numpy() for x, _ in batches])
    assert xs.shape == (9, 10) and (xs.flatten() == np.arange(90)).all()
