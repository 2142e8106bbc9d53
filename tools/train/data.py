"""Training data: RULER-style task instances from the project's own generator
(`starattn eval --dump-instances`, run in parallel before training) and varied real text
(Python's standard-library sources and this repository's docs and sources), laid out as byte-level
token ids exactly as starattn lays out a prompt for a byte model.

An instance row is [context ids][query ids][answer bytes][EOS]: context = BOS + document, query =
question + "\\n" + RULER's answer prefix (document_prompt without a chat template), answer = the
generator's reference reply (" 1234567.", ...), which RULER's string_match_all scores as correct;
the engine stops at EOS. A text row is BOS + documents separated by EOS. Rows are padded with PAD
(no loss).

This module does not import torch; its workers are forked before the trainer touches CUDA.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import subprocess
import sysconfig
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOS, EOS, PAD = 256, 257, 258
TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe"]
TEXT_SUFFIXES = {".py", ".md", ".cpp", ".h", ".cu", ".cuh", ".sh", ".txt", ".cmake"}


@dataclass
class Instance:
    task: str
    length: int
    ids: np.ndarray  # uint16: context + query + answer bytes + EOS
    answer_start: int  # index in ids of the first answer byte


@dataclass
class TextCorpus:
    train: list = field(default_factory=list)  # bytes objects
    held_out: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # description -> (files, bytes)

    def train_bytes(self) -> int:
        return sum(len(b) for b in self.train)


# ---------------------------------------------------------------- instances (C++ generator)

def _dump_job(job: tuple) -> list:
    """Runs one `starattn eval --dump-instances` and parses its lines into Instances."""
    binary, length, samples, seed, path, tasks = job
    cmd = [binary, "eval", "--task", ",".join(tasks), "--length", str(length), "--samples",
           str(samples), "--seed", str(seed), "--dump-instances", path, "--quiet"]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            j = json.loads(line)
            context, query = j["context_ids"], j["query_ids"]
            if n == 0:  # the byte-model layout this trainer assumes
                want_c = [BOS] + list(j["document"].encode("utf-8"))
                want_q = list((j["question"] + "\n" + j["answer_prefix"]).encode("utf-8"))
                if context != want_c or query != want_q:
                    raise RuntimeError(f"{path}: ids are not the byte-level layout")
            answer = list(j["answer"].encode("utf-8")) + [EOS]
            ids = np.asarray(context + query + answer, dtype=np.uint16)
            out.append(Instance(j["task"], j["length"], ids, len(context) + len(query)))
    os.remove(path)
    return out


def generate_instances(binary: str, plan: dict, seed: int, workdir: str, jobs: int,
                       per_job_tokens: int = 2 << 20, tasks=TASKS) -> dict:
    """plan: {length: samples per task}. Runs the generator in `jobs` parallel processes, each on
    its own seed (seed, seed+1, ...: keep training seeds away from the eval's small ones).
    Returns {length: [Instance]}."""
    os.makedirs(workdir, exist_ok=True)
    job_list = []
    next_seed = seed
    for length, samples in sorted(plan.items()):
        per_job = max(1, min(samples, per_job_tokens // (length * len(tasks))))
        left = samples
        while left > 0:
            k = min(per_job, left)
            path = os.path.join(workdir, f"inst_L{length}_s{next_seed}.jsonl")
            job_list.append((binary, length, k, next_seed, path, list(tasks)))
            next_seed += 1
            left -= k
    by_length = {length: [] for length in plan}
    # Longest first so the slow jobs start early.
    job_list.sort(key=lambda j: -j[1] * j[2])
    # fork: the trainer has imported torch but not initialised CUDA yet (spawn would re-import it
    # in every worker).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as pool:
        for result in pool.map(_dump_job, job_list):
            for inst in result:
                by_length[inst.length].append(inst)
    return by_length


def plan_instances(stages: list, minutes: float, est_tps: float, task_frac: float,
                   reuse: float, min_samples: int = 8, tasks=TASKS) -> dict:
    """Samples per task for each stage length: enough that each instance is seen about `reuse`
    times at the estimated throughput (more is drawn again, shuffled, if the GPU is faster).
    est_tps is the rate at the longest stage; attention's share shrinks with the length, so
    shorter stages are assumed faster by sqrt(longest / length), at most 2x (H200: 0.82M tokens/s
    at 16K, 1.5M at 1K)."""
    plan = {}
    longest = max(length for length, _ in stages)
    for length, frac in stages:
        tps = est_tps * min(2.0, math.sqrt(longest / length))
        rows = tps * minutes * 60 * frac / length
        per_task = math.ceil(rows * task_frac / len(tasks) / reuse)
        plan[length] = max(plan.get(length, 0), min_samples, per_task)
    return plan


# ---------------------------------------------------------------- varied text

def collect_text(repo_root: str, max_bytes: int, held_out_every: int = 20) -> TextCorpus:
    """Python's standard library (*.py) and this repository's text files (docs, README, sources),
    up to max_bytes in all; every `held_out_every`-th file (by a hash of its path) is held out."""
    corpus = TextCorpus()
    roots = []
    if repo_root and os.path.isdir(repo_root):  # small: first, so the byte cap never drops it
        roots.append(("repository docs and sources", Path(repo_root), TEXT_SUFFIXES,
                      (".git", "bundle", ".venv", "models", "__pycache__", "third_party", "data")))
    stdlib = sysconfig.get_paths().get("stdlib")
    if stdlib and os.path.isdir(stdlib):
        roots.append(("python standard library (*.py) " + stdlib, Path(stdlib), {".py"},
                      ("site-packages",)))
    total = 0
    for desc, root, suffixes, skip in roots:
        files = nbytes = 0
        for path in _walk(root, skip):
            rel = path.relative_to(root)
            if path.suffix not in suffixes or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if not data or len(data) > 2 << 20 or b"\0" in data[:4096]:
                continue
            if total + len(data) > max_bytes:
                break
            held = zlib.crc32(str(rel).encode()) % held_out_every == 0
            (corpus.held_out if held else corpus.train).append(data)
            files += 1
            nbytes += len(data)
            total += len(data)
        corpus.sources[desc] = (files, nbytes)
    if not corpus.train:
        raise RuntimeError("no text found (python stdlib, repository)")
    return corpus


def _walk(root: Path, skip) -> list:
    """Files under root in a stable order, not entering skipped, hidden or build* folders."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in skip and not x.startswith((".", "build")))
        out.extend(Path(d) / f for f in sorted(files))
    return out


def random_line_start(doc: bytes, rng: np.random.Generator) -> int:
    """Offset of the line after a random point of doc (0 when there is none): a row's first
    document starts there, so rows do not all open with a file's first line."""
    start = int(rng.integers(0, max(1, len(doc) - 64)))
    nl = doc.find(b"\n", start)
    return nl + 1 if 0 <= nl < len(doc) - 1 else 0


def text_row(docs: list, length: int, rng: np.random.Generator, weights=None) -> np.ndarray:
    """BOS + documents (the first from a random line, then whole ones) separated by EOS."""
    row = [np.array([BOS], dtype=np.uint16)]
    have = 1
    first = True
    while have < length:
        d = docs[rng.choice(len(docs), p=weights)]
        start = 0
        if first:
            start = random_line_start(d, rng)
            first = False
        piece = np.frombuffer(d[start:start + length - have], dtype=np.uint8).astype(np.uint16)
        row.append(piece)
        have += len(piece)
        if have < length:
            row.append(np.array([EOS], dtype=np.uint16))
            have += 1
    return np.concatenate(row)[:length]


# ---------------------------------------------------------------- recall drill

def _word(rng, lo=3, hi=9) -> str:
    return "".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(rng.integers(lo, hi))))


def recall_row(length: int, rng: np.random.Generator):
    """A dense associative-recall drill in the needle tasks' wording: blocks of facts "One of the
    special magic numbers for KEY is: VALUE." (random keys word-word, 7-digit values) followed by
    questions answered in RULER's answer-prefix form "The special magic number for KEY mentioned
    in the provided text is VALUE." about the block's keys, shuffled. Returns ids (length) and the
    answer mask (the recalled values and their period), so the lookup the tasks need is supervised
    many times a row instead of once."""
    ids = [BOS]
    mask = [False]
    def put(text, answer=False):
        b = text.encode()
        ids.extend(b)
        mask.extend([answer] * len(b))
    while len(ids) < length:
        n = int(rng.integers(2, max(3, min(33, length // 150))))  # a block fits the row
        keys = [f"{_word(rng)}-{_word(rng)}" for _ in range(n)]
        values = [str(int(v)) for v in rng.integers(1000000, 10000000, n)]
        for k, v in zip(keys, values):
            put(f"One of the special magic numbers for {k} is: {v}. ")
        put("\n")
        for i in rng.permutation(n):
            put(f"The special magic number for {keys[i]} mentioned in the provided text is")
            put(f" {values[i]}.", answer=True)
            put("\n")
        put("\n")
    return (np.asarray(ids[:length], dtype=np.int64), np.asarray(mask[:length], dtype=bool))


# ---------------------------------------------------------------- batches

class Batcher:
    """Rows of `length + 1` ids (inputs are [:-1], labels [1:]): a task instance of that length
    with probability task_frac, a recall drill with probability recall_frac, else text. Instances are drawn without replacement, reshuffled
    when used up."""

    def __init__(self, instances: dict, corpus: TextCorpus, task_frac: float, seed: int,
                 recall_frac: float = 0.0):
        self.instances = instances
        self.docs = corpus.train
        sizes = np.array([len(d) for d in self.docs], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.task_frac = task_frac
        self.recall_frac = recall_frac
        self.rng = np.random.default_rng(seed)
        self.order = {}
        self.drawn = {}  # length -> instances drawn (repeats show as > pool size)

    def _next_instance(self, length: int) -> Instance:
        pool = self.instances[length]
        order = self.order.get(length)
        if not order:
            order = list(self.rng.permutation(len(pool)))
            self.order[length] = order
        self.drawn[length] = self.drawn.get(length, 0) + 1
        return pool[order.pop()]

    def batch(self, length: int, rows: int):
        """ids [rows, length+1] int64, answer [rows, length+1] bool (the answer bytes and EOS)."""
        ids = np.full((rows, length + 1), PAD, dtype=np.int64)
        answer = np.zeros((rows, length + 1), dtype=bool)
        for r in range(rows):
            u = self.rng.random()
            if self.instances.get(length) and u < self.task_frac:
                inst = self._next_instance(length)
                n = min(len(inst.ids), length + 1)
                ids[r, :n] = inst.ids[:n]
                answer[r, inst.answer_start:n] = True
            elif u < self.task_frac + self.recall_frac:
                ids[r], answer[r] = recall_row(length + 1, self.rng)
            else:
                ids[r] = text_row(self.docs, length + 1, self.rng, self.weights)
        return ids, answer
