"""Local GGUF models through llama-cpp-python, with multi-sequence batched decoding.

Why not `llama_cpp.Llama`: its context holds one sequence (it ignores `n_seq_max`), so a batch of
prompts would run one after another. Here one context holds up to `max_parallel` sequences: the
prompts' shared prefix (the few-shot examples or the chat template's system part) is decoded once
and copied to every sequence, then all sequences decode one token each per step in a single
`llama_decode` call, which on a CPU reuses each weight matrix across the whole batch.

Every sequence samples with its own seeded sampler chain, so its text depends only on its seed and
its logits.

Reproducibility: the same prompts, seeds and settings give the same texts whatever the model decoded
before, and whether the stable prefix's state was saved already. llama.cpp's CPU kernels round
differently by how many tokens a decode call holds and where a token sits in it, and (flash
attention off) by where a sequence's cells lie in the KV cache: reusing the previous call's cells
made a repeated prompt (only its last token decoded) or a prompt after a similar one (only the
tokens after their common part) read other logits and, now and then, write another text
(bench/seed_reproducibility.py). So every call starts from an empty cache and makes the same decode
calls; all it carries over is the stable prefix (`stable_prefix`), as the same bytes every time:
decoded alone into an empty cache once, then put back from that saved state (kept in memory, or
the `state_dir` file, which any process with the same model writes the same way).

Which prompts share a batch still counts: other prompts change the shapes of the decode calls, so
a prompt's logits differ in the last bits from its logits alone and its text may part after a few
tokens (bench/enhance.py counts how often). Making that irrelevant would take flash attention (so
that other sequences' cells do not count) and every decode call padded to whole groups of four
tokens and of four logit rows; a prototype with the first two was 55-70% slower and still parted.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import _internals

from paav_cli.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are llama-cpp-python's own `create_completion` defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 256


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens, stop sequence included
    finish: str  # "stop" (a stop string or end-of-generation token) or "length"


def _default_threads() -> int:
    """The cores no other process keeps busy right now (all of them, up to 8, on an idle machine).

    llama.cpp's threads meet at a barrier after every operation, so one thread that shares its core
    with another process holds up all the others: beside busy processes 16 prompts took 219-908 s on
    both cores against 36-60 s on one thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores - _busy_cores(), 8))


def _busy_cores(samples: int = 3) -> int:
    """Threads of other processes running now (Linux's run queue; 0 where it is unknown). The least of
    a few samples 2 ms apart, so that a process only passing through is not counted."""
    import time

    counts = []
    for i in range(samples):
        running = _run_queue()
        if running is None:
            return 0
        counts.append(running - _own_running_threads())
        if i < samples - 1:
            time.sleep(0.002)
    return max(0, min(counts))


def _run_queue() -> int | None:
    """Threads running or ready to run on this machine now, this process's included."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_running_threads() -> int:
    """This process's threads in the run queue: the one reading, and any that llama.cpp's OpenMP pool
    left spinning after loading (on an idle machine the queue holds 2 once llama_cpp is imported)."""
    n = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            n += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            pass
    return max(n, 1)


class LlamaCppModel:
    """One GGUF file loaded once; contexts sized to the work are made as needed."""

    def __init__(
        self,
        path: Path,
        *,
        n_threads: int | None = None,
        max_parallel: int = 32,
        max_context: int = 4096,
        lora_path: Path | None = None,
        state_dir: Path | None = None,
        verbose: bool = False,
    ):
        self.path = Path(path)
        self.n_threads = n_threads or _default_threads()
        self.max_parallel = max_parallel
        self.verbose = verbose
        _quiet_llama_logs(verbose)
        params = llama_cpp.llama_model_default_params()
        try:
            self._model = _internals.LlamaModel(
                path_model=str(self.path), params=params, verbose=verbose
            )
        except ValueError:
            raise UserError(
                f"{self.path} is not a GGUF model llama.cpp can load (missing, truncated or corrupt); "
                "pull or export it again."
            ) from None
        self.max_context = min(max_context, self._model.n_ctx_train())
        self._ctx: _internals.LlamaContext | None = None
        self._ctx_shape = (0, 0)
        # The stable prefix's tokens and sequence 0's saved KV state after decoding them (see the
        # module's docstring): put back into every call's emptied cache instead of decoding them.
        self._prefix_state: tuple[list[int], ctypes.Array] | None = None
        self.state_dir = Path(state_dir) if state_dir else None
        self._lora_path = Path(lora_path) if lora_path else None
        self._lora = None
        if lora_path is not None:
            self._load_lora(Path(lora_path))
        meta = self._model.metadata()
        self.chat_template = meta.get("tokenizer.chat_template")
        self.architecture = meta.get("general.architecture", "unknown")

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens)).decode("utf-8", errors="ignore")

    def _piece(self, token: int) -> bytes:
        # The wrapper's token_to_piece returns a fixed 32-byte buffer padded with NULs.
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, 64, 0, False)
        return buf.raw[: max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def chat_prompt(self, messages: list[dict]) -> str:
        """Messages formatted with the model's own chat template (from the GGUF metadata)."""
        if not self.chat_template:
            raise UserError(
                f"{self.path.name} has no chat template; register it with prompt_format = \"fewshot\"."
            )
        # Bounded in time and size: the template is code written by whoever made the file.
        from paav_cli.text.chat_template import render_chat_template

        bos = self._model.token_get_text(self._model.token_bos()) if self._model.token_bos() >= 0 else ""
        eos = self._model.token_get_text(self._model.token_eos()) if self._model.token_eos() >= 0 else ""
        return render_chat_template(self.chat_template, messages, source=str(self.path), bos_token=bos,
                                    eos_token=eos)

    def encode_prompt(self, text: str) -> list[int]:
        """Tokens of a prompt, with BOS added unless the text (a chat template's output) has it."""
        bos_id = self._model.token_bos()
        tokens = self.tokenize(text, add_bos=self._model.add_bos_token())
        if len(tokens) > 1 and tokens[0] == bos_id and tokens[1] == bos_id:
            tokens = tokens[1:]
        return tokens

    # ------------------------------------------------------------------ contexts

    def _load_lora(self, lora_path: Path) -> None:
        if not lora_path.is_file():
            raise UserError(f"LoRA adapter {lora_path} does not exist; check the path.")
        errors: list[str] = []
        with _llama_errors(errors):
            adapter = llama_cpp.llama_adapter_lora_init(self._model.model, str(lora_path).encode("utf-8"))
        # A refused file is a NULL pointer, which ctypes hands back as a falsy pointer object, not None:
        # taken for an adapter, it crashed the process on the first decode.
        if not adapter:
            reason = errors[-1].split("failed to apply lora adapter:")[-1].strip().rstrip(".") if errors else ""
            why = f" (llama.cpp: {reason})" if reason else ""
            raise UserError(
                f"{lora_path} is not a LoRA adapter that fits {self.path.name}{why}; give an adapter exported "
                "for this base with `paav export --lora`."
            )
        self._lora = adapter

    def _context(self, n_seq: int, n_ctx_seq: int) -> _internals.LlamaContext:
        """A context for `n_seq` sequences of `n_ctx_seq` tokens each, reused while big enough."""
        have_seq, have_ctx = self._ctx_shape
        if self._ctx is not None and have_seq >= n_seq and have_ctx >= n_ctx_seq:
            return self._ctx
        if self._ctx is not None:
            self._ctx.close()
        n_seq = max(n_seq, have_seq)
        n_ctx_seq = max(n_ctx_seq, have_ctx)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_seq_max = n_seq
        params.n_batch = max(512, n_seq)
        params.n_ubatch = max(512, n_seq)
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        # One unified KV buffer: the shared few-shot prefix is stored once and every sequence points
        # at it (seq_cp copies by reference). Measured here with 32 prompts: 9.9 s of decoding
        # against 11.9 s with one stream per sequence, where the prefix is copied 32 times.
        params.kv_unified = True
        params.no_perf = True
        # Flash attention off, as llama-cpp-python's `Llama` has it: on the CPU its f16 Q.K path
        # moved first-token logits by up to 0.7 here and made texts part from llama-cpp-python's
        # for the same seed; without it they match bit for bit, at the same speed.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=self.verbose)
        if self._lora is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora)
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales)
        self._ctx_shape = (n_seq, n_ctx_seq)
        return self._ctx

    def context_limit(self) -> int:
        return self.max_context

    # ------------------------------------------------------------------ for verification

    @property
    def adds_bos(self) -> bool:
        """Whether tokenizing a text puts the beginning-of-sequence token first (the GGUF's add_bos_token)."""
        return bool(self._model.add_bos_token())

    @property
    def appended_eos(self) -> int | None:
        """The end-of-sequence id that tokenizing appends (add_eos_token), or None."""
        eos = self._model.token_eos()
        return eos if self._model.add_eos_token() and eos >= 0 else None

    def all_logits(self, ids: Sequence[int], *, n_threads: int | None = None):
        """Logits at every position of `ids` (numpy, positions x vocabulary), from a fresh context with
        an F32 KV cache and the model's LoRA adapter applied: for comparing against transformers, where
        generation's F16 cache and single-position logits would hide or add differences."""
        import numpy as np

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = max(64, len(ids) + 1)
        params.n_batch = params.n_ubatch = max(64, len(ids))
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = n_threads or self.n_threads
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        if self._lora is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora)
            llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        batch = _internals.LlamaBatch(n_tokens=len(ids), embd=0, n_seq_max=1)
        try:
            for i, token in enumerate(ids):
                _add(batch, token, i, 0, True)
            code = llama_cpp.llama_decode(ctx.ctx, batch.batch)
            if code != 0:
                raise RuntimeError(f"llama_decode failed with code {code}")
            ptr = llama_cpp.llama_get_logits(ctx.ctx)
            return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                         shape=(len(ids), self._model.n_vocab())).copy()
        finally:
            batch.close()
            ctx.close()

    # ------------------------------------------------------------------ generation

    def complete(
        self,
        prompts: Sequence[list[int]],
        *,
        seeds: Sequence[int],
        sampling: Sampling,
        stop: Sequence[str] = (),
        on_done: Callable[[int, Completion], None] | None = None,
        stable_prefix: Sequence[int] = (),
    ) -> list[Completion]:
        """Continue each token list; `on_done(i, completion)` fires as each sequence finishes.

        `stable_prefix`: leading tokens that every call of this kind shares (the few-shot examples);
        with a `state_dir`, their KV state is saved once and loaded on later runs instead of decoded.
        """
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(prompts), self.max_parallel):
            chunk = range(start, min(start + self.max_parallel, len(prompts)))

            def done(i: int, completion: Completion, offset: int = start) -> None:
                results[offset + i] = completion
                if on_done:
                    on_done(offset + i, completion)

            self._complete_chunk(
                [prompts[i] for i in chunk], [seeds[i] for i in chunk], sampling, stop, done, stable_prefix
            )
        return results  # type: ignore[return-value]

    def _sampler(self, seed: int, sampling: Sampling) -> _internals.LlamaSampler:
        sampler = _internals.LlamaSampler()
        if sampling.repeat_penalty != 1.0:
            sampler.add_penalties(self._model.n_vocab(), 64, sampling.repeat_penalty, 0.0, 0.0)
        if sampling.temperature <= 0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(sampling.top_k)
        sampler.add_top_p(sampling.top_p, 1)
        sampler.add_min_p(sampling.min_p, 1)
        sampler.add_temp(sampling.temperature)
        sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    def _complete_chunk(self, prompts, seeds, sampling: Sampling, stop, done, stable_prefix=()) -> None:
        n = len(prompts)
        longest = max(len(p) for p in prompts)
        need = longest + sampling.max_tokens + 1
        if need > self.max_context:
            raise UserError(
                f"a prompt needs {longest} tokens plus {sampling.max_tokens} to generate, more than the "
                f"{self.max_context}-token context; shorten it or lower --max-tokens."
            )
        ctx = self._context(n, _round_up(need, 256))
        batch = _internals.LlamaBatch(n_tokens=max(ctx.params.n_batch, n), embd=0, n_seq_max=1)
        try:
            start = self._place_shared_prefix(ctx, batch, prompts, stable_prefix)
            samplers = [self._sampler(seeds[s], sampling) for s in range(n)]
            for s in range(n):  # the penalties sampler should see the prompt's recent tokens
                for token in prompts[s][-64:]:
                    llama_cpp.llama_sampler_accept(samplers[s].sampler, token)
            first = self._decode_tokens(
                ctx, batch, [(s, prompts[s][start:], start) for s in range(n)], samplers=samplers
            )
            self._generate(ctx, batch, prompts, first, samplers, sampling, stop, done)
        finally:
            batch.close()

    def _place_shared_prefix(self, ctx, batch, prompts, stable_prefix) -> int:
        """Put the prompts' common prefix into every sequence's KV cache; return its length.

        The cache is emptied first, whatever the previous call left there: kept cells would make
        this call decode other tokens in other shapes than a first call does, and the texts differ.
        The stable prefix goes into sequence 0 as its saved state (`_put_stable_prefix`). One prompt:
        the rest is decoded in one call together with the last token, as llama-cpp-python's `Llama`
        decodes a prompt after the part it kept. Several prompts: the rest of their common prefix is
        decoded once in sequence 0 and shared.
        """
        n = len(prompts)
        mem = llama_cpp.llama_get_memory(ctx.ctx)
        llama_cpp.llama_memory_clear(mem, True)
        shared = min(_common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        start = self._put_stable_prefix(ctx, batch, prompts[0][:shared], stable_prefix)
        if n > 1:
            if shared > start:
                self._decode_tokens(ctx, batch, [(0, prompts[0][start:shared], start)])
            start = shared
            for s in range(1, n):
                llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
        return start

    def _state_file(self, tokens: Sequence[int]) -> Path:
        import hashlib

        stat = self.path.stat()
        identity = [str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, llama_cpp.__version__]
        if self._lora_path is not None:
            lora = self._lora_path.stat()
            identity += [str(self._lora_path.resolve()), lora.st_size, lora.st_mtime_ns]
        digest = hashlib.sha256(repr((identity, list(tokens))).encode()).hexdigest()[:32]
        return self.state_dir / f"{digest}.kv"

    def _put_stable_prefix(self, ctx, batch, prefix: list[int], stable_prefix: Sequence[int]) -> int:
        """Put the stable part of `prefix` into the empty sequence 0; returns how many tokens of
        `prefix` are now in place (0 when the stable part is too short to be worth it).

        Always the same bytes, however they are got: the state kept in memory, else the `state_dir`
        file, else the tokens decoded alone in one call into the empty cache (then saved to both).
        Decoding them with the tokens after them, or after other cells, would round differently.
        Decoding the few-shot examples is about a fifth of a single prompt's latency on a CPU; the
        saved state (a few MB) loads in milliseconds.
        """
        stable = _common_prefix_length([list(stable_prefix), prefix]) if stable_prefix else 0
        if stable < 32:
            return 0
        tokens = prefix[:stable]
        if self._prefix_state is not None and self._prefix_state[0] == tokens:
            data = self._prefix_state[1]
            if llama_cpp.llama_state_seq_set_data(ctx.ctx, data, len(data), 0) == len(data):
                return stable
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
        path = self._state_file(tokens) if self.state_dir is not None else None
        if path is not None and path.exists():
            out = (llama_cpp.llama_token * stable)()
            count = ctypes.c_size_t(0)
            read = llama_cpp.llama_state_seq_load_file(ctx.ctx, str(path).encode(), 0, out, stable, ctypes.byref(count))
            if read and count.value == stable and list(out) == tokens:
                self._keep_prefix_state(ctx, tokens)
                return stable
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
        self._decode_tokens(ctx, batch, [(0, tokens, 0)])
        self._keep_prefix_state(ctx, tokens)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                array = (llama_cpp.llama_token * stable)(*tokens)
                if llama_cpp.llama_state_seq_save_file(ctx.ctx, str(tmp).encode(), 0, array, stable):
                    os.replace(tmp, path)
                else:
                    tmp.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache only costs speed
        return stable

    def _keep_prefix_state(self, ctx, tokens: list[int]) -> None:
        size = llama_cpp.llama_state_seq_get_size(ctx.ctx, 0)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx.ctx, data, size, 0) == size:
            self._prefix_state = (list(tokens), data)

    def _decode_tokens(self, ctx, batch, work, samplers=None) -> dict[int, int]:
        """Decode (seq, tokens, start_pos) items in n_batch-sized calls; sample each seq's next token."""
        capacity = ctx.params.n_batch
        sampled: dict[int, int] = {}
        pending: list[tuple[int, int]] = []  # (seq, batch index of its last token)
        batch.reset()
        for seq, tokens, start in work:
            for i, token in enumerate(tokens):
                if batch.batch.n_tokens == capacity:
                    self._flush(ctx, batch, pending, samplers, sampled)
                last = i == len(tokens) - 1
                _add(batch, token, start + i, seq, last and samplers is not None)
                if last and samplers is not None:
                    pending.append((seq, batch.batch.n_tokens - 1))
        self._flush(ctx, batch, pending, samplers, sampled)
        return sampled

    def _flush(self, ctx, batch, pending, samplers, sampled) -> None:
        if batch.batch.n_tokens == 0:
            return
        _decode(ctx, batch)
        for seq, index in pending:
            sampled[seq] = llama_cpp.llama_sampler_sample(samplers[seq].sampler, ctx.ctx, index)
        pending.clear()
        batch.reset()

    def _generate(self, ctx, batch, prompts, first, samplers, sampling, stop, done) -> None:
        n = len(prompts)
        generated: list[list[int]] = [[] for _ in range(n)]
        raw: list[bytes] = [b"" for _ in range(n)]
        position = [len(p) for p in prompts]
        next_token = dict(first)
        active = list(range(n))
        while active:
            still = []
            for s in active:
                token = next_token[s]
                generated[s].append(token)
                finish = None
                if self.is_eog(token):
                    finish = "stop"
                else:
                    raw[s] += self._piece(token)
                    text = raw[s].decode("utf-8", errors="ignore")
                    cut = min((text.find(x) for x in stop if x in text), default=-1)
                    if cut >= 0:
                        raw[s] = text[:cut].encode("utf-8")
                        finish = "stop"
                    elif len(generated[s]) >= sampling.max_tokens:
                        finish = "length"
                if finish:
                    text = raw[s].decode("utf-8", errors="ignore")
                    done(s, Completion(text=text, tokens=len(generated[s]), finish=finish))
                else:
                    still.append(s)
            active = still
            if not active:
                break
            batch.reset()
            for i, s in enumerate(active):
                _add(batch, next_token[s], position[s], s, True)
                position[s] += 1
            _decode(ctx, batch)
            next_token.update(self._sample_all(ctx, samplers, active))

    def _sample_all(self, ctx, samplers, seqs: list[int]) -> dict[int, int]:
        """The next token of every sequence in `seqs` (batch index i holds seqs[i])."""
        return {s: llama_cpp.llama_sampler_sample(samplers[s].sampler, ctx.ctx, i) for i, s in enumerate(seqs)}

    def generate(
        self, messages: list[dict], *, n: int = 1, temperature: float = 0.8, max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[str]:
        """The `TextGenerator` interface: `n` chat completions of `messages` (seeds seed .. seed+n-1)."""
        tokens = self.encode_prompt(self.chat_prompt(messages))
        base = 0 if seed is None else seed
        sampling = Sampling(temperature=temperature, max_tokens=max_tokens)
        out = self.complete([tokens] * n, seeds=[base + i for i in range(n)], sampling=sampling)
        return [c.text.strip() for c in out]

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self._model.close()


@contextmanager
def _llama_errors(into: list[str]):
    """Collect llama.cpp's error lines meanwhile: it says why it refuses a file only in its log
    (wrong general.type, another architecture, a tensor of the wrong shape)."""
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR (llama-cpp-python's table still says 3, an older ggml's)
            into.append(text.decode("utf-8", errors="replace").strip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _quiet_llama_logs(verbose: bool) -> None:
    # llama.cpp logs every context it builds to stderr; paav speaks for itself unless asked.
    import logging

    from llama_cpp import _logger

    _logger.logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)


def _add(batch: _internals.LlamaBatch, token: int, pos: int, seq: int, logits: bool) -> None:
    b = batch.batch
    j = b.n_tokens
    b.token[j] = token
    b.pos[j] = pos
    b.seq_id[j][0] = seq
    b.n_seq_id[j] = 1
    b.logits[j] = logits
    b.n_tokens = j + 1


def _decode(ctx: _internals.LlamaContext, batch: _internals.LlamaBatch) -> None:
    code = llama_cpp.llama_decode(ctx.ctx, batch.batch)
    if code != 0:
        raise RuntimeError(f"llama_decode failed with code {code}")


def _common_prefix_length(prompts: Sequence[list[int]]) -> int:
    first = prompts[0]
    length = len(first)
    for other in prompts[1:]:
        limit = min(length, len(other))
        i = 0
        while i < limit and first[i] == other[i]:
            i += 1
        length = i
    return length


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
