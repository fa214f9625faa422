"""Inference for registry models, with no Ray: task predictions, fill-mask and generation.

Everything the HTTP API promises about one input is done here or by the task type
(lmplatform.tasks), so it is testable without a server: input shape checks per task type
(`InputError`, answered as 422), truncation to the model's length (`"truncated": true`), and the
task type's reading of the output (labels and scores, entities, semantic roles).

`SharedEncoder` runs one forward of a frozen encoder for the rows of several tasks and gives
each task's head its rows: N frozen-feature tasks from one parent cost one encoder pass.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lmplatform.models.families import families_serving, family
from lmplatform.models.gpt.model import Sampling
from lmplatform.models.io import from_pretrained, read_config
from lmplatform.models.layers import Encoded
from lmplatform.models.tasks import TaskModel
from lmplatform.serving.api import ModelInfo
from lmplatform.tasks import task_type
from lmplatform.tasks.base import CHARS_PER_POSITION, Encoding, InputError, Item, check_text
from lmplatform.tasks.encoding import TaskEncoder, pad
from lmplatform.tasks.seq2seq import DecodingConfig
from lmplatform.tokenization import load_tokenizer, special_tokens

__all__ = ["InputError", "Item", "ModelInfo", "SharedEncoder", "Stopped", "TaskPredictor"]


def device() -> torch.device:
    """A replica given a GPU (replica_gpus) serves on it; otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def token_budget(dev: torch.device) -> int:
    """Padded tokens per forward (rows x longest). It bounds what one dynamic batch costs at
    once (memory, and the attention's rows x longest^2), whatever the requests hold. On CPU
    small forwards waste the GEMMs (one 10-token SST-2 sentence: 3.6 ms; eight: 1.1 ms each) and
    big ones pad and spill the caches (32 mixed sentences: no gain over one at a time); 256
    keeps BERT-mini at ~2.8 ms/sentence vs 4.8 alone. A GPU wants more."""
    return 256 if dev.type == "cpu" else 16384


def length_chunks(lengths: list[int], max_tokens: int, keys: list | None = None) -> list[list[int]]:
    """Indices sorted by (key, length), cut into runs of one key whose rows x longest stays
    within `max_tokens` (at least one row each): a forward per run. Sorting by length first
    keeps the padding small (padding a batch to its longest text wasted up to 3x the compute
    on CPU: SST-2, 32 per batch, 196 ms vs ~6 ms/item alone)."""
    keys = keys if keys is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (keys[i], lengths[i]))
    out: list[list[int]] = []
    for i in order:
        run = out[-1] if out else None
        if run is None or keys[run[0]] != keys[i] or (len(run) + 1) * lengths[i] > max_tokens:
            out.append([i])
        else:
            run.append(i)
    return out


GENERATE_BUDGET = 16
"""A decoding step forwards one token per row: a generate call may hold this many times the
token budget in cache positions (CPU: 4,096; 16 rows of 256 tokens)."""


class Stopped(Exception):
    """The work was given up between two steps: its request timed out or was cancelled."""


def _batch(encodings: list[Encoding], pad_id: int, to: torch.device) -> dict[str, torch.Tensor]:
    """Padded ids plus the head's own inputs (the SRL predicate's position, say)."""
    batch = pad([e.ids for e in encodings], [e.types for e in encodings], pad_id, to)
    for key in encodings[0].extra if encodings else ():
        batch[key] = torch.tensor([e.extra[key] for e in encodings], device=to)
    return batch


def quantized_int8(model: nn.Module, on: torch.device) -> nn.Module:
    """The model with every Linear layer dynamically quantized to int8 (weights stored in int8,
    inputs quantized per batch from their observed range); the rest stays fp32."""
    engines = torch.backends.quantized.supported_engines
    if on.type != "cpu" or not set(engines) & {"x86", "fbgemm", "qnnpack"}:
        raise ValueError(
            f"int8 quantization runs on CPU with a quantized engine (this replica: {on.type}, "
            f"engines {engines})"
        )
    with warnings.catch_warnings():
        # torch 2.13 marks its quantized tensor constructors deprecated (pytorch#184982); the
        # path still works and is the one torch ships without another library
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


class TaskPredictor:
    """A registered task model (folder from the registry) ready to predict batches of inputs.
    What an input looks like and how an output reads is the task type's (lmplatform.tasks)."""

    def __init__(
        self,
        folder: str | Path,
        ref: ModelInfo,
        model: TaskModel | None = None,
        compile: str | None = None,
        quantize: str | None = None,
    ):
        meta = read_config(folder)
        if meta.get("kind") != "task":
            raise ValueError(f"{folder} holds a {meta.get('kind')!r} model, not a task model")
        self.ref = ref
        self.kind: str = meta["head"]["type"]
        self.task = task_type(self.kind)
        self.frozen: bool = bool(meta["head"].get("frozen", False))
        self.labels: list[str] = list(meta["labels"])
        self.max_len: int = int(meta.get("max_seq_len") or meta["model"]["max_seq_len"])
        self.task_name: str = meta.get("task_name") or ref.name
        self.model: TaskModel = model if model is not None else from_pretrained(folder)
        self.device = device()
        self.model.to(self.device).eval()
        self.quantize = quantize
        if quantize:
            self.model = quantized_int8(self.model, self.device)
        if compile:  # in place: the state dict keeps its names
            self.model.compile(backend=compile, dynamic=True)
        self.tokenizer = load_tokenizer(Path(folder) / "tokenizer.json")
        self.encoder = TaskEncoder(self.tokenizer, self.kind, self.max_len)
        # seq2seq: beam search and the request limits the task was promoted with
        self.decoding = DecodingConfig.model_validate(meta.get("decoding") or {})
        self.calls = 0  # model forwards (the batching test reads it)
        self.max_tokens = token_budget(self.device)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def info(self) -> dict:
        """The /v1/tasks entry of this task."""
        model = self.ref.model_dump()
        return {
            "task": self.ref.name,
            "type": self.kind,
            "labels": self.labels,
            "model": model,
            "quantized": self.quantize,
        }

    def smoke(self) -> None:
        """One tiny prediction: a model that cannot answer this must not go live."""
        self.predict(self.parse([self.task.smoke_input]))

    def parse(
        self,
        inputs: list,
        is_split_into_words: bool = False,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Item]:
        """Check every input and option against the task type; the first bad one raises
        InputError."""
        if not isinstance(inputs, list) or not inputs:
            raise InputError("inputs: expected a non-empty list")
        if is_split_into_words and not self.task.accepts_split_words:
            raise InputError(
                f"is_split_into_words is only for token_classification tasks (this one is {self.kind})"
            )
        options = {
            "is_split_into_words": is_split_into_words,
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens,
            "decoding": self.decoding,
        }
        self.task.check_options(options)
        return [
            self.task.parse(x, f"inputs[{i}]", self.max_len, options) for i, x in enumerate(inputs)
        ]

    def encode(self, items: list[Item]) -> list[Encoding]:
        return [self.task.encode(self.encoder, it) for it in items]

    @torch.inference_mode()
    def predict(self, items: list[Item]) -> list[dict]:
        """Predictions for a batch, in forwards of similar length within `max_tokens`
        (`length_chunks`); items decoded with other options (beams, length) never share one."""
        encodings = self.encode(items)
        pad_id = special_tokens(self.tokenizer).pad
        keys = [sorted(it.options.items()) for it in items]
        out: list[dict | None] = [None] * len(items)
        with self._lock:
            for idx in length_chunks([len(e.ids) for e in encodings], self.max_tokens, keys):
                batch = _batch([encodings[i] for i in idx], pad_id, self.device)
                self.calls += 1
                if self.task.whole_model:
                    preds = self.task.generate(
                        self.model, batch, self.encoder, self.decoding, items[idx[0]].options
                    )
                    for pr, i in zip(preds, idx):
                        pr["truncated"] = pr["truncated"] or encodings[i].truncated
                else:
                    logits = self.model(**batch)["logits"].cpu()
                    preds = self.decode(
                        [items[i] for i in idx], logits, [encodings[i] for i in idx]
                    )
                for i, pr in zip(idx, preds):
                    out[i] = pr
        return out  # type: ignore[return-value]

    def decode(
        self, items: list[Item], logits: torch.Tensor, encodings: list[Encoding]
    ) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=-1)
        return [
            self.task.decode(it, probs[k], e, self.labels)
            for k, (it, e) in enumerate(zip(items, encodings))
        ]


class SharedEncoder:
    """Frozen-feature task models from one parent: one encoder, one forward per batch, N heads."""

    def __init__(self, predictors: dict[str, TaskPredictor]):
        if not predictors:
            raise ValueError("a shared-encoder group needs at least one task")
        first = next(iter(predictors.values()))
        for name, p in predictors.items():
            if not p.frozen:
                raise ValueError(
                    f"task {name!r} was fine-tuned in full (its encoder changed): only "
                    f"frozen-feature tasks can share an encoder"
                )
            if p.tokenizer.to_str() != first.tokenizer.to_str():
                raise ValueError(
                    f"task {name!r} uses another tokenizer than the group's first task"
                )
        enc0 = first.model.encoder.state_dict()
        for name, p in predictors.items():
            other = p.model.encoder.state_dict()
            if other.keys() != enc0.keys() or any(not torch.equal(enc0[k], other[k]) for k in enc0):
                raise ValueError(
                    f"task {name!r} has other encoder weights than the group's first task: "
                    f"the group's tasks must come from the same pretrained model"
                )
        self.encoder = first.model.encoder.eval()
        for p in predictors.values():  # keep one copy of the encoder in memory
            p.model.encoder = self.encoder
        self.predictors = predictors
        self.pad_id = special_tokens(first.tokenizer).pad
        self.calls = 0  # encoder forwards
        self.largest_forward = 0  # padded tokens of the largest one
        self.max_tokens = token_budget(next(self.encoder.parameters()).device)
        self._lock = threading.Lock()

    def smoke(self) -> None:
        """One tiny prediction per task, all in one forward as requests are answered."""
        self.predict([(t, p.parse([p.task.smoke_input])) for t, p in self.predictors.items()])

    def _encode(self, batch: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]) -> Encoded:
        """The encoder over a batch whose `rows` belong to each task."""
        return self.encoder.encode(**batch)

    @torch.no_grad()
    def predict(self, requests: list[tuple[str, list[Item]]]) -> list[list[dict]]:
        """[(task, items)] -> predictions per request: each encoder forward (rows of similar
        length within `max_tokens`) serves the rows of every task in it."""
        rows = []  # (request, position, task, item, encoding)
        for r, (task, items) in enumerate(requests):
            encs = self.predictors[task].encode(items)
            rows += [(r, k, task, it, e) for k, (it, e) in enumerate(zip(items, encs))]
        out: list[list] = [[None] * len(items) for _, items in requests]
        with self._lock:
            for idx in length_chunks([len(row[4].ids) for row in rows], self.max_tokens):
                chunk = [rows[i] for i in idx]
                for (r, k, *_), pred in zip(chunk, self._forward(chunk)):
                    out[r][k] = pred
        return out

    def _forward(self, chunk: list[tuple]) -> list[dict]:
        """One encoder forward over the chunk's rows, then each task's head on its rows."""
        dev = next(self.encoder.parameters()).device
        encs = [row[4] for row in chunk]
        batch = pad([e.ids for e in encs], [e.types for e in encs], self.pad_id, dev)
        self.calls += 1
        self.largest_forward = max(self.largest_forward, batch["input_ids"].numel())
        by_task: dict[str, list[int]] = {}
        for j, row in enumerate(chunk):
            by_task.setdefault(row[2], []).append(j)
        rows = {task: torch.tensor(js, device=dev) for task, js in by_task.items()}
        enc = self._encode(batch, rows)
        preds: list = [None] * len(chunk)
        for task, js in by_task.items():
            sel = rows[task]
            sub = Encoded(
                layers=[h[sel] for h in enc.layers],
                pooled=None if enc.pooled is None else enc.pooled[sel],
            )
            p = self.predictors[task]
            head_inputs = {
                key: torch.tensor([encs[j].extra[key] for j in js], device=dev)
                for key in encs[js[0]].extra
            }
            logits = p.model.head_logits(sub, batch["attention_mask"][sel], **head_inputs)
            got = p.decode([chunk[j][3] for j in js], logits.cpu(), [encs[j] for j in js])
            for j, pred in zip(js, got):
                preds[j] = pred
        return preds


class _PretrainedPredictor:
    """A pretrained model of one family from the registry, on this replica's device."""

    route = ""

    def __init__(self, folder: str | Path, ref: ModelInfo):
        meta = read_config(folder)
        if self.route not in family(meta["model"]["family"]).serves or meta.get("kind") == "task":
            raise ValueError(
                f"{self.route} needs a pretrained {' or '.join(families_serving(self.route))}; "
                f"{ref.name} is not one"
            )
        self.ref = ref
        self.created: str | None = meta.get("created")  # registered at (ISO 8601, UTC)
        self.device = device()
        self.model = from_pretrained(folder).to(self.device).eval()
        self.tokenizer = load_tokenizer(Path(folder) / "tokenizer.json")
        self.sp = special_tokens(self.tokenizer)
        self.max_len = int(meta["model"]["max_seq_len"])
        self.max_tokens = token_budget(self.device)
        self.calls = 0  # model forwards (fill-mask) or generate calls
        self.largest_forward = 0  # padded tokens of the largest forward
        self.steps = 0  # decoding steps run (generation)
        self._lock = threading.Lock()  # held per forward or decoding step, never longer


class FillMaskPredictor(_PretrainedPredictor):
    """A pretrained BERT: the top-k tokens for every [MASK] of each input."""

    route = "fill-mask"

    def parse(self, inputs: list) -> list[Item]:
        items = []
        for i, x in enumerate(inputs):
            t = check_text(x, f"inputs[{i}]")
            if "[MASK]" not in t:
                raise InputError(f"inputs[{i}]: no [MASK] token in the text")
            limit = self.max_len * CHARS_PER_POSITION
            items.append(Item(text=t[:limit], cut=len(t) > limit))
        return items

    @torch.no_grad()
    def predict(self, items: list[Item], top_k: int) -> list[dict]:
        """The top-k tokens of each [MASK], in forwards within `max_tokens` (`length_chunks`)."""
        ids, truncated = [], []
        for it in items:
            e = self.tokenizer.encode(it.text).ids
            ids.append(e[: self.max_len - 1] + e[-1:] if len(e) > self.max_len else e)
            truncated.append(len(e) > self.max_len or it.cut)
        out: list[dict | None] = [None] * len(items)
        for idx in length_chunks([len(s) for s in ids], self.max_tokens):
            for k, masks in zip(idx, self._top_k([ids[k] for k in idx], top_k)):
                out[k] = {"masks": masks, "truncated": truncated[k] or not masks}
        return out  # type: ignore[return-value]

    def _top_k(self, ids: list[list[int]], top_k: int) -> list[list]:
        """One forward: per row, per [MASK], the top-k tokens and their probabilities."""
        batch = pad(ids, [[0] * len(s) for s in ids], self.sp.pad, self.device)
        vocab = self.tokenizer.get_vocab_size()  # the embedding may have spare rows past it
        out = []
        with self._lock:
            self.calls += 1
            self.largest_forward = max(self.largest_forward, batch["input_ids"].numel())
            h = self.model.bert(
                batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
            )
            for k, s in enumerate(ids):
                positions = [p for p, t in enumerate(s) if t == self.sp.mask]
                if not positions:
                    out.append([])
                    continue
                logits = self.model.mlm_logits(h[k, positions]).float()[:, :vocab].cpu()
                top = torch.topk(torch.softmax(logits, -1), min(top_k, vocab), dim=-1)
                out.append(
                    [
                        [
                            {"token": self.tokenizer.id_to_token(i), "score": v}
                            for i, v in zip(ri, rv)
                        ]
                        for rv, ri in zip(top.values.tolist(), top.indices.tolist())
                    ]
                )
        return out


class GeneratePredictor(_PretrainedPredictor):
    """A pretrained GPT: continuations, greedy or sampled."""

    route = "generate"

    def parse(self, inputs: list) -> list[Item]:
        limit = self.max_len * CHARS_PER_POSITION
        return [
            Item(text=check_text(x, f"inputs[{i}]")[-limit:], cut=len(x) > limit)
            for i, x in enumerate(inputs)
        ]

    def _prompt(self, it: Item, max_new_tokens: int) -> tuple[list[int], bool]:
        """The prompt's ids (its newest part when prompt + continuation exceed the context)
        and whether anything was cut."""
        e = self.tokenizer.encode(it.text, add_special_tokens=False).ids or [self.sp.eot]
        keep = max(1, self.max_len - max_new_tokens)
        return e[-keep:], len(e) > keep or it.cut

    @torch.no_grad()
    def predict(
        self,
        items: list[Item],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int | None = None,
        stop: list[str] | None = None,
        should_stop=None,
    ) -> list[dict]:
        """Continuations of a batch; prompts of one length share each step (GPT has no padding
        mask, so different lengths run as separate calls). `should_stop()` is asked between
        steps: True (the requests timed out or were cancelled) raises Stopped."""
        prompts = [self._prompt(it, max_new_tokens) for it in items]
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        out: list[dict | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for k, (p, _) in enumerate(prompts):
            groups.setdefault(len(p), []).append(k)
        for _, ks in self._generate_chunks(groups, max_new_tokens):
            with self._lock:
                self.calls += 1
            x = torch.tensor([prompts[k][0] for k in ks], device=self.device)
            rows = [Continuation(self.tokenizer, self.sp.eot, stop) for _ in ks]
            steps = self.model.generate_steps(x, max_new_tokens, sampling, generator=gen)
            for nxt in self._stepped(steps, should_stop):
                for row, t in zip(rows, nxt[:, 0].tolist()):
                    row.add(t)
                if all(r.finish for r in rows):  # end of text or a stop sequence each
                    break
            for row, k in zip(rows, ks):
                out[k] = row.result(prompts[k][1], len(prompts[k][0]))
        return out  # type: ignore[return-value]

    def _generate_chunks(self, groups: dict[int, list[int]], max_new_tokens: int):
        """(prompt length, rows) per generate call: prompts of one length, at most
        GENERATE_BUDGET x token budget positions of key/value cache per call (rows x the
        window each row attends to), so a batch of many long requests cannot hold an
        unbounded cache; each step is a one-token forward per row."""
        for n, ks in sorted(groups.items()):
            window = min(n + max_new_tokens, self.max_len)
            rows = max(1, GENERATE_BUDGET * self.max_tokens // window)
            for i in range(0, len(ks), rows):
                yield n, ks[i : i + rows]

    def _stepped(self, steps: Iterator[torch.Tensor], should_stop=None) -> Iterator[torch.Tensor]:
        """The decoding steps, each under the model lock and no longer: other requests (a
        stream, a batch) interleave with this one step by step instead of waiting for all of
        it; `should_stop` is asked before each step."""
        try:
            while True:
                if should_stop is not None and should_stop():
                    raise Stopped("generation stopped: its requests timed out or were cancelled")
                with self._lock:
                    nxt = next(steps, None)
                    self.steps += nxt is not None
                if nxt is None:
                    return
                yield nxt
        finally:
            steps.close()

    @torch.no_grad()
    def stream(
        self,
        item: Item,
        max_new_tokens: int,
        sampling: Sampling,
        stop: list[str] | None = None,
        should_stop=None,
    ) -> Iterator[dict]:
        """One continuation as it is produced: `{"text": <new text>}` per token (held back
        while it may be the start of a stop sequence), then the final answer with
        `"done": true` (the same fields as predict's)."""
        ids, cut = self._prompt(item, max_new_tokens)
        row = Continuation(self.tokenizer, self.sp.eot, stop)
        x = torch.tensor([ids], device=self.device)
        with self._lock:
            self.calls += 1
        steps = self.model.generate_steps(x, max_new_tokens, sampling)
        for nxt in self._stepped(steps, should_stop):
            delta = row.add(int(nxt[0, 0]))
            if delta:
                yield {"text": delta}
            if row.finish:
                break
        rest = row.flush()
        if rest:
            yield {"text": rest}
        yield {**row.result(cut, len(ids)), "done": True}


class Continuation:
    """One row's generated text: tokens until end of text, a stop sequence (cut before it) or
    the length limit; what of it can be streamed already."""

    def __init__(self, tokenizer, eot: int, stop: list[str] | None):
        self.tokenizer, self.eot, self.stop = tokenizer, eot, [s for s in stop or [] if s]
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0  # characters of text already streamed
        self.finish: str | None = None  # "eos" | "stop"; "length" when the steps ran out

    def add(self, token: int) -> str:
        """Take the next token (ignored once finished); the text now safe to stream."""
        if self.finish:
            return ""
        if token == self.eot:
            self.finish = "eos"
            return self.flush()
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens)
        cuts = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.finish = self.text[: min(cuts)], "stop"
            return self.flush()
        # hold back what may begin a stop sequence, and a half-decoded character
        hold = max((len(s) - 1 for s in self.stop), default=0)
        safe = len(self.text) - hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        return self._emit(safe)

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta

    def result(self, cut: bool, prompt_tokens: int) -> dict:
        return {
            "text": self.text,
            "tokens": len(self.tokens),
            "prompt_tokens": prompt_tokens,
            "truncated": cut,
            "finish_reason": self.finish or "length",
        }
