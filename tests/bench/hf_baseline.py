"""The Hugging Face side of `bench_engine`: the same weights in transformers' `LlamaForCausalLM`,
run with each batching transformers offers, so the engine is compared with the faster one.

- padded: its own `generate`, left-padded batches of `concurrency` requests in arrival order
  with attention masks, greedy, `eos_token_id=None` so nothing stops early. A batch runs for
  its longest request's output length; only each request's requested tokens count as output.
- continuous: its continuous-batching manager (paged KV cache, per-request `max_new_tokens`,
  at most `concurrency` requests per batch and the engine's token budget per step).

Each phase runs on a thread of its own that ends with it. torch's OpenMP workers belong to
the thread that first used them; while two such sets are alive and together outnumber the
cores, libgomp stops every set spinning between parallel regions (the engine's steps ran
1.4x slower so on two cores). The continuous-batching manager steps on its own background
thread, so the calling thread must not have used torch's thread pool either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.nn.attention import sdpa_kernel

from museserve.model.muse import MuseForCausalLM
from museserve.runner.kv_pool import SDPA_BACKENDS

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    max_output_tokens: int


@dataclass(frozen=True)
class HFRun:
    outputs: list[list[int]]  # each job's requested tokens, in job order
    wall_s: float
    generated_tokens: int  # including the tokens padded batches generate past a request's own length


def on_fresh_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) on a new thread, joined before this returns (see the module's docstring)."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(fn, *args).result()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_model(model: MuseForCausalLM, device: torch.device, dtype: torch.dtype):
    import transformers

    with device:  # built where it runs: no second copy of the weights on the CPU
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf_dict()))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()  # shares embed_tokens.weight
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
    return hf.to(dtype).eval()


def padded_batch(hf, jobs: list[Job], pad_id: int) -> tuple[list[list[int]], int]:
    """One left-padded batch; returns each job's requested tokens and the tokens generated per row."""
    from transformers import GenerationConfig

    width = max(len(j.prompt) for j in jobs)
    device = hf.device
    input_ids = torch.full((len(jobs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
    for row, job in enumerate(jobs):
        input_ids[row, width - len(job.prompt) :] = torch.tensor(job.prompt, device=device)
        mask[row, width - len(job.prompt) :] = 1
    new_tokens = max(j.max_output_tokens for j in jobs)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    with torch.inference_mode(), sdpa_kernel(SDPA_BACKENDS):  # the attention kernels our engine may use
        out = hf.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
    generated = out[:, width:]
    if generated.shape[1] != new_tokens:
        raise RuntimeError(f"Hugging Face generated {generated.shape[1]} tokens, not {new_tokens}")
    return [generated[row, : job.max_output_tokens].tolist() for row, job in enumerate(jobs)], new_tokens


def run_padded(hf, jobs: list[Job], warmup: list[Job], batch_size: int, pad_id: int) -> HFRun:
    padded_batch(hf, warmup, pad_id)
    outputs: list[list[int]] = []
    generated = 0
    synchronize(hf.device)
    start = time.perf_counter()
    for first in range(0, len(jobs), batch_size):
        batch = jobs[first : first + batch_size]
        tokens, per_row = padded_batch(hf, batch, pad_id)
        outputs.extend(tokens)
        generated += per_row * len(batch)
    synchronize(hf.device)
    return HFRun(outputs, time.perf_counter() - start, generated)


def run_continuous(hf, jobs: list[Job], warmup: list[Job], concurrency: int, max_batch_tokens: int) -> HFRun:
    """All jobs submitted at once to transformers' continuous-batching manager; greedy, no end token."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    generation = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(j.max_output_tokens for j in jobs),
        eos_token_id=-1,  # its way of saying none
        pad_token_id=0,
        bos_token_id=None,
    )
    batching = ContinuousBatchingConfig(max_requests_per_batch=concurrency, max_batch_tokens=max_batch_tokens)
    # No inference mode here: the manager's thread updates tensors this one creates (it uses no_grad).
    with (
        sdpa_kernel(SDPA_BACKENDS),
        hf.continuous_batching_context_manager(
            generation_config=generation, continuous_batching_config=batching, warmup=True
        ) as manager,
    ):
        collect(manager, [manager.add_request(j.prompt, max_new_tokens=j.max_output_tokens) for j in warmup])
        synchronize(hf.device)
        start = time.perf_counter()
        ids = [manager.add_request(j.prompt, max_new_tokens=j.max_output_tokens) for j in jobs]
        results = collect(manager, ids)
        synchronize(hf.device)
        wall = time.perf_counter() - start
    outputs = [list(results[request_id].generated_tokens) for request_id in ids]
    for job, tokens in zip(jobs, outputs, strict=True):
        if len(tokens) != job.max_output_tokens:
            raise RuntimeError(f"continuous batching generated {len(tokens)} tokens, not {job.max_output_tokens}")
    return HFRun(outputs, wall, sum(len(t) for t in outputs))


def collect(manager, request_ids: list[str]) -> dict:
    """Waits for every request's finished result; a manager that stops answering fails the bench."""
    finished: dict = {}
    while len(finished) < len(request_ids):
        result = manager.get_result(timeout=600)
        if result is None:
            why = manager.background_thread_status.fatal_error
            raise RuntimeError(f"continuous batching returned {len(finished)} of {len(request_ids)} results: {why!r}")
        if result.is_finished():
            finished[result.request_id] = result
    return finished


BATCHINGS = ("padded", "continuous")


def run_batchings(
    model: MuseForCausalLM,
    jobs: list[Job],
    warmup: list[Job],
    batchings: tuple[str, ...],
    concurrency: int,
    max_batch_tokens: int,
) -> tuple[object, dict[str, HFRun | str]]:
    """(the transformers model, batching -> its run or why it failed). Padded batches run first:
    the continuous manager switches the model's attention implementation."""
    device = next(model.parameters()).device
    hf = on_fresh_thread(hf_model, model, device, next(model.parameters()).dtype)
    runs: dict[str, HFRun | str] = {}
    for batching in batchings:
        try:
            if batching == "padded":
                runs[batching] = on_fresh_thread(run_padded, hf, jobs, warmup, concurrency, 0)
            else:  # the manager steps on its own thread; this one only waits for results
                runs[batching] = run_continuous(hf, jobs, warmup, concurrency, max_batch_tokens)
        except Exception as exc:  # reported with the results, not hidden: the other batching still counts
            runs[batching] = f"{type(exc).__name__}: {exc}"
    return hf, runs
