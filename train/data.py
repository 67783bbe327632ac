"""`slm data prepare`: tokenize sources into memory-mapped token shards with a document index.

Layout of the output folder (one sub-folder per source, each split written atomically):

    OUT/slm.json                     sources, weights, dtype, tokenizer hash, the fingerprint of the inputs
    OUT/<source>/source.json         this source's fingerprint, documents and tokens per split
    OUT/<source>/<split>.tokens.bin  raw uint16 (vocab ≤ 65536) or uint32 token ids, documents concatenated
    OUT/<source>/<split>.docs.npy    int64 offsets, n_docs + 1: document d is tokens[docs[d]:docs[d+1]]
    OUT/<source>/<split>.mask.bin    uint8 per token, 1 = assistant token (chat sources only: SFT loss mask)

Idempotent: the fingerprint hashes every input file (path, bytes), the tokenizer and the options; the same
inputs give the same bytes (sorted files, order-preserving pool, held-out split chosen by a hash of each
document; a Hub dataset by its commit). Resumable: a source whose source.json carries the current fingerprint
is not redone. What a source is and how its documents are read: sources.py (Hub datasets: hub_data.py).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slm.errors import SlmError
from slm.figure import from_file
from slm.guard import clean_stale_temps, guard_output
from slm.record import atomic_write_text, file_sha256, read_record, write_record

from .hub_data import HubStream, is_hub
from .sources import Source, check_records, is_heldout, parse_source, read_documents, source_files

# Source, parse_source: sources.py
__all__ = ["DataArgs", "Source", "parse_source", "prepare", "tokenize_doc"]

SPLITS = ("train", "heldout")


@dataclass
class DataArgs:
    sources: list  # list[Source]
    tokenizer: str  # folder with tokenizer.json (usually the model folder)
    heldout: float = 0.02  # fraction of each source's documents held out for evaluation (at least 1 document)
    limit: int = 0  # at most this many documents per source (0 = all), taken in sorted order
    max_tokens: int = 0  # per source, documents are taken until this many tokens are reached (0 = all)
    workers: int = 2  # tokenizer processes
    force: bool = False  # replace an output prepared from different inputs
    progress: bool = True  # rich progress bar

    def __post_init__(self):
        self.sources = [s if isinstance(s, Source) else Source(**s) for s in self.sources]
        if not self.sources:
            raise SlmError("no sources: pass at least one --source NAME=PATH[:WEIGHT]")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise SlmError(f"duplicate source names {names}: give each source its own name")
        if not 0 <= self.heldout < 1:
            raise SlmError(f"heldout must be in [0, 1) (got {self.heldout})")
        if self.workers < 1 or self.limit < 0 or self.max_tokens < 0:
            raise SlmError("workers must be ≥ 1, and --max-docs and --max-tokens ≥ 0")


# ---- tokenizing (in worker processes) -----------------------------------------------------------------
_TOK = None


def _init_worker(tokenizer_dir: str) -> None:
    global _TOK
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    _TOK = AutoTokenizer.from_pretrained(tokenizer_dir)


def tokenize_doc(doc: dict, tok=None) -> tuple[list[int], list[int] | None]:
    """(token ids, assistant mask or None). Text: ids + EOS. Chat: the chat template, mask = assistant
    spans."""
    tok = tok or _TOK
    if "text" in doc:
        ids = tok(doc["text"], add_special_tokens=False)["input_ids"]
        return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else []), None
    msgs = doc["messages"]
    text = tok.apply_chat_template(msgs, tokenize=False)
    # Assistant spans in characters: rendering the conversation up to each assistant turn (with the
    # generation prompt) and through it gives where its reply starts and ends in the full text. Written by
    # hand because many chat templates (SmolLM2's included) lack the {% generation %} marks that
    # transformers' return_assistant_tokens_mask needs.
    spans = []
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant":
            start = len(tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True))
            end = len(tok.apply_chat_template(msgs[: i + 1], tokenize=False))
            if text[:end] != tok.apply_chat_template(msgs[: i + 1], tokenize=False):
                raise SlmError("the chat template does not render conversations prefix by prefix; cannot "
                               "mask the prompt")
            spans.append((start, end))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask


def _work(doc: dict):
    ids, mask = tokenize_doc(doc)
    return ids, mask, is_heldout(doc, _HELDOUT)


_HELDOUT = 0.0


def _init_all(tokenizer_dir: str, heldout: float) -> None:
    global _HELDOUT
    _HELDOUT = heldout
    _init_worker(tokenizer_dir)


# ---- the step -----------------------------------------------------------------------------------------
def fingerprint(src: Source, files: list[Path], tok_hash: str, args: DataArgs, origin: dict | None = None
                ) -> str:
    """A hash of everything a source's shards depend on: its options, the tokenizer, the limits, and its
    files' bytes (or, for a Hub dataset, the commit it was read at)."""
    h = hashlib.sha256(json.dumps([asdict(src), tok_hash, args.heldout, args.limit, args.max_tokens, origin]
                                  ).encode())
    for f in files:
        h.update(str(f).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def tokenizer_hash(tokenizer_dir: Path) -> str:
    files = [tokenizer_dir / n
             for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model")]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + file_sha256(f).encode())
    return h.hexdigest()


def prepare(args: DataArgs, out: Path | str) -> dict:
    """Tokenize every source of `args` into `out`. Returns the record's result (per-source counts). `out` is
    guarded for the whole step (slm.guard: never a source or the tokenizer folder, even with --force;
    writable; locked), every input is checked before a folder is made, and a failure leaves no new empty
    folder."""
    out = Path(out)
    # force=True only breaks a dead process's lock: prepare resumes by design (a rerun continues a killed
    # one), and whether an existing `out` may be replaced is _check_existing's question, under args.force.
    local = [s.path for s in args.sources if not is_hub(s.path)]
    with guard_output(out, local + [args.tokenizer], force=True, exists_ok=True):
        return _prepare(args, out)


def _prepare(args: DataArgs, out: Path) -> dict:
    tok_dir = Path(args.tokenizer)
    if not (tok_dir / "tokenizer.json").is_file() and not (tok_dir / "tokenizer.model").is_file():
        raise SlmError(f"no tokenizer in {tok_dir}: pass --tokenizer MODEL_DIR (a folder with "
                       "tokenizer.json)")
    # every path, Hub dataset and column checked before any work
    streams = {s.name: HubStream(s) for s in args.sources if is_hub(s.path)}
    files = {s.name: [] if s.name in streams else source_files(s) for s in args.sources}
    for s in args.sources:
        check_records(s, files[s.name], args.limit)  # every record's schema, before any tokenizing
    _init_worker(str(tok_dir))
    vocab = len(_TOK)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    tok_hash = tokenizer_hash(tok_dir)
    origins = {n: st.origin for n, st in streams.items()}
    prints = {s.name: fingerprint(s, files[s.name], tok_hash, args, origins.get(s.name))
              for s in args.sources}
    overall = hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()
    try:
        rec = read_record(out) if out.is_dir() else None
    except SlmError:  # unreadable or of an older slm: replaced with --force, else the one line says why
        if not args.force:
            raise
        rec = {"stale": True}
    if rec and rec.get("result", {}).get("fingerprint") == overall:
        return {**rec["result"], "up_to_date": True}
    _check_existing(out, args, rec)
    if args.force and rec:
        shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)  # sources whose tokenizing was killed
    result = {"sources": {}, "dtype": np.dtype(dtype).name, "vocab": vocab, "tokenizer_sha256": tok_hash,
              "fingerprint": overall}
    try:
        for s in args.sources:
            result["sources"][s.name] = _prepare_source(s, files[s.name], prints[s.name], out, dtype, args,
                                                        streams.get(s.name))
    except BaseException:
        if created and not any(not p.name.startswith(".") for p in out.iterdir()):
            # nothing finished: no empty folder left (finished sources resume)
            shutil.rmtree(out, ignore_errors=True)
        raise
    figures = [from_file(f"{n}.{k}", f"{n}: {what} tokens", v[k], "tokens", group="training", key=True)
               for n, v in result["sources"].items() for k, what in (("train_tokens", "training"),
                                                                      ("heldout_tokens", "held-out"))]
    write_record(out, "data", {**asdict(args), "out": str(out)}, {"tokenizer": tok_dir / "tokenizer.json"}
                 if (tok_dir / "tokenizer.json").is_file() else {}, result, figures=figures)
    return result


def _check_existing(out: Path, args: DataArgs, rec: dict | None) -> None:
    """An existing `out` may be replaced only when it holds prepared data and --force is given, or resumed
    when it holds only finished sources of this run."""
    if rec and not args.force:
        raise SlmError(f"{out} holds data prepared from other inputs: choose another folder or pass --force")
    if out.exists() and not out.is_dir():
        raise SlmError(f"{out} exists and is not a folder: choose another path")
    if out.is_dir() and not rec and not ({p.name for p in out.iterdir() if not p.name.startswith(".")}
                                         <= {s.name for s in args.sources}):
        if not args.force:
            raise SlmError(f"{out} is not empty and holds no prepared data: choose another folder or pass "
                           "--force")


def _prepare_source(src: Source, files: list[Path], fp: str, out: Path, dtype, args: DataArgs,
                    stream: HubStream | None) -> dict:
    final = out / src.name
    meta_path = final / "source.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fp:
            return meta  # resumable: this source is already done
    tmp = out / f".{src.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _tokenize_source(src, files, fp, tmp, dtype, args, stream)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return meta


def _tokenize_source(src: Source, files: list[Path], fp: str, tmp: Path, dtype, args: DataArgs,
                     stream: HubStream | None) -> dict:
    """Tokenize one source's documents into the split files under `tmp`; returns its source.json."""
    docs = stream.documents() if stream else read_documents(src, files)
    if args.limit:
        docs = (d for i, d in zip(range(args.limit), docs))
    writers = {sp: _SplitWriter(tmp, sp, dtype) for sp in SPLITS}
    kind = None
    frac = args.heldout if src.heldout is None else src.heldout
    tokens = 0
    for ids, mask, held in _tokenized(docs, args, frac, src.name):
        kind = kind or ("chat" if mask is not None else "text")
        if (mask is not None) != (kind == "chat"):
            raise SlmError(f"source {src.name} mixes text and chat records: split them into two sources")
        writers["heldout" if held else "train"].add(ids, mask)
        tokens += len(ids)
        if args.max_tokens and tokens >= args.max_tokens:
            break  # a sample of a (streamed) corpus: the rest is never read
    if writers["train"].n_docs + writers["heldout"].n_docs == 0:
        raise SlmError(f"source {src.name}: no non-empty documents in {src.path}")
    if frac and writers["heldout"].n_docs == 0 and writers["train"].n_docs > 1:
        writers["train"].move_last_to(writers["heldout"])  # tiny sources: still hold one document out
    meta = {"name": src.name, "kind": kind, "weight": src.weight, "fingerprint": fp,
            "dtype": np.dtype(dtype).name, "files": len(files), **({"hub": stream.origin} if stream else {})}
    for sp, w in writers.items():
        meta.update(w.close())
    atomic_write_text(tmp / "source.json", json.dumps(meta, indent=2))
    return meta


def _tokenized(docs, args: DataArgs, frac: float, name: str):

    with Progress(TextColumn(f"tokenizing {name}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("documents"), TimeElapsedColumn(), disable=not args.progress,
                  transient=True) as bar:
        task = bar.add_task("tok", total=args.limit or None)
        if args.workers == 1:
            _init_all(args.tokenizer, frac)
            results = map(_work, docs)
            pool = None
        else:

            pool = mp.get_context("spawn").Pool(args.workers, _init_all, (args.tokenizer, frac))
            results = pool.imap(_work, docs, chunksize=8)  # imap keeps order → same shards every time
        try:
            for r in results:
                bar.advance(task)
                yield r
        finally:
            if pool:
                pool.terminate()


class _SplitWriter:
    """Appends documents to <split>.tokens.bin (+ mask) and keeps the offsets for <split>.docs.npy."""

    def __init__(self, folder: Path, split: str, dtype):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.tokens = open(folder / f"{split}.tokens.bin", "wb")
        self.mask = None
        self.offsets = [0]
        self.pending: list = []

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1 + len(self.pending)

    def add(self, ids, mask) -> None:
        if not ids:
            return
        # Keep the last document in memory so a tiny source can still move it to the held-out split.
        for item in self.pending:
            self._write(*item)
        self.pending = [(ids, mask)]

    def _write(self, ids, mask) -> None:
        self.tokens.write(np.asarray(ids, dtype=self.dtype).tobytes())
        if mask is not None:
            if self.mask is None:
                self.mask = open(self.folder / f"{self.split}.mask.bin", "wb")
            self.mask.write(np.asarray(mask, dtype=np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(ids))

    def move_last_to(self, other: _SplitWriter) -> None:
        item, self.pending = self.pending.pop(), []
        other.add(*item)

    def close(self) -> dict:
        for item in self.pending:
            self._write(*item)
        self.pending = []
        self.tokens.close()
        if self.mask:
            self.mask.close()
        np.save(self.folder / f"{self.split}.docs.npy", np.asarray(self.offsets, dtype=np.int64))
        return {f"{self.split}_docs": len(self.offsets) - 1, f"{self.split}_tokens": int(self.offsets[-1])}
