"""Images and audio through the engine: chunked prefill cutting through media, prefix caching
keyed by the media, preemption; all against a plain full-recompute forward of the model
over the same embeddings."""

from __future__ import annotations

import pytest
import torch

from museserve.config import PoolConfig
from museserve.domain import AudioPart, ChatRequest, ImagePart, Message, Role, SamplingParams, TextPart
from museserve.engine.block_manager import BlockManager
from museserve.engine.media import block_media_keys, step_slices
from museserve.engine.request_state import RequestState
from museserve.engine.scheduler import SchedulerLimits
from museserve.engine.sequence import Sequence
from museserve.errors import InvalidArgument
from museserve.messages import MediaSegment, PreparedRequest
from museserve.model.muse import MuseForCausalLM
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.kv_pool import PagedKVPool
from museserve.runner.loading import load_pool_model
from museserve.runner.model_runner import ModelRunner
from tests.indexed_scheduler import IndexedScheduler
from tests.media_samples import SMALL_MEDIA as MEDIA
from tests.media_samples import png_bytes, wav_bytes
from tests.reference_kv_cache import SequenceKVCache

BLOCK = 4
CHUNK = 6  # against 4-token blocks and 20-token images: chunks end inside both
POOL = PoolConfig(
    name="muse-mm",
    model={"device": "cpu"},  # the references below compute on the CPU
    engine={"context_length": 1024, "max_output_tokens": 64, "default_max_output_tokens": 8, "block_size": BLOCK},
)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def model(tokenizer: MuseTokenizer) -> MuseForCausalLM:
    return load_pool_model(POOL, tokenizer.vocab_size, MEDIA)


@pytest.fixture(scope="module")
def pre(tokenizer: MuseTokenizer) -> Preprocessor:
    return Preprocessor(PoolModel.muse(tokenizer), MEDIA, request_timeout_s=60)


def prepare(pre: Preprocessor, *parts: TextPart | ImagePart | AudioPart, rid: str = "r") -> PreparedRequest:
    greedy = SamplingParams(temperature=0.0)
    return pre.prepare(ChatRequest(request_id=rid, messages=(Message(Role.USER, parts),), sampling=greedy), POOL)


def picture(seed: int) -> ImagePart:
    return ImagePart(data=png_bytes(32, 40, seed), mime_type="image/png")


@torch.inference_mode()
def greedy_reference(model: MuseForCausalLM, request: PreparedRequest, n: int) -> list[int]:
    """Every step recomputes the whole sequence from embeddings built with the model directly."""
    tokens = list(request.prompt_token_ids)
    for _ in range(n):
        tokens.append(int(full_logits(model, request, tokens)[-1].argmax()))
    return tokens[request.num_prompt_tokens :]


def full_logits(model: MuseForCausalLM, request: PreparedRequest, tokens: list[int]) -> torch.Tensor:
    """[len(tokens), vocab]: one forward over the whole sequence, media rows in place, no cache."""
    rows: dict[str, list[torch.Tensor]] = {}
    positions: dict[str, list[torch.Tensor]] = {}
    for s in request.media:
        rows.setdefault(s.kind, []).append(feature_rows(s))
        positions.setdefault(s.kind, []).append(torch.arange(s.start, s.start + s.num_tokens))
    media_rows = {kind: torch.cat(r) for kind, r in rows.items()}
    media_positions = {kind: torch.cat(p) for kind, p in positions.items()}
    embeds = model.embed(torch.tensor(tokens), media_rows, media_positions)
    hidden = model(embeds, torch.arange(len(tokens)), SequenceKVCache.for_model(model.config))
    return model.compute_logits(hidden)


def feature_rows(s: MediaSegment) -> torch.Tensor:
    return torch.frombuffer(bytearray(s.features), dtype=torch.float16).view(s.num_tokens, s.feature_dim).float()


def run_core(model: MuseForCausalLM, batches: list[list[PreparedRequest]], n: int, num_blocks: int = 256) -> tuple:
    """Scheduler + block manager + paged runner as the engine loop drives them; each batch
    arrives once the one before has finished. Returns outputs, preemptions, the block manager
    and the cached prompt tokens of each request at its admission."""
    blocks = BlockManager(num_blocks, BLOCK)
    scheduler = IndexedScheduler(SchedulerLimits(8, 16, max_batched_tokens=16, max_prefill_chunk=CHUNK), blocks)
    runner = ModelRunner(model, PagedKVPool(model.config, num_blocks, BLOCK, dtype=torch.float32, device="cpu"))
    outputs: dict[str, list[int]] = {}
    cached: dict[str, int] = {}
    preemptions = 0
    for batch in batches:
        for r in batch:
            scheduler.add(Sequence(r.request_id, r.prompt_token_ids, cache_salt=r.tenant, media=r.media))
            outputs[r.request_id] = []
        while scheduler.has_work():
            plan = scheduler.schedule()
            preemptions += len(plan.preempted)
            for item in plan.sequences:
                cached.setdefault(item.request_id, scheduler.get(item.request_id).num_cached_tokens)
            logits = runner.execute(plan)
            sampling = [item.request_id for item in plan.sequences if item.samples]
            sampled = {rid: int(logits[i].argmax()) for i, rid in enumerate(sampling)}
            scheduler.update_plan(plan, sampled)
            for rid, token in sampled.items():
                outputs[rid].append(token)
                if len(outputs[rid]) == n:
                    scheduler.finish(rid)
    return outputs, preemptions, blocks, cached


def test_chunks_cut_through_the_image_and_equal_full_recompute(model: MuseForCausalLM, pre: Preprocessor) -> None:
    request = prepare(pre, TextPart("what is in"), picture(0), TextPart("this picture?"))
    (image,) = request.media
    # One sequence alone computes CHUNK tokens a step, so steps start at multiples of CHUNK:
    # neither end of the image is on one, and some fall inside it.
    assert image.start % CHUNK and (image.start + image.num_tokens) % CHUNK and image.num_tokens > CHUNK
    outputs, _, _, _ = run_core(model, [[request]], 8)
    assert outputs["r"] == greedy_reference(model, request, 8)
    other = prepare(pre, TextPart("what is in"), picture(1), TextPart("this picture?"))
    with torch.inference_mode():  # the image reaches the logits: another image, other logits
        ids = list(request.prompt_token_ids)
        assert not torch.allclose(full_logits(model, request, ids)[-1], full_logits(model, other, ids)[-1])


def test_prefix_cache_reuses_the_same_image_never_another(model: MuseForCausalLM, pre: Preprocessor) -> None:
    def ask(seed: int, rid: str) -> PreparedRequest:
        return prepare(pre, TextPart("describe"), picture(seed), TextPart("in one word"), rid=rid)

    first, same, different = ask(0, "first"), ask(0, "same"), ask(1, "different")
    assert same.prompt_token_ids == different.prompt_token_ids  # the placeholders alone cannot tell them apart
    outputs, _, blocks, cached = run_core(model, [[first], [same], [different]], 6)
    image = first.media[0]
    blocks_before_image = image.start // BLOCK
    assert cached["first"] == 0
    assert cached["same"] == (first.num_prompt_tokens - 1) // BLOCK * BLOCK  # every full block, image included
    assert cached["different"] == blocks_before_image * BLOCK  # only the text before the image
    for request in (first, same, different):
        assert outputs[request.request_id] == greedy_reference(model, request, 6)
    assert blocks.num_free_blocks == blocks.num_blocks


def test_audio_through_chunks_and_the_prefix_cache(model: MuseForCausalLM, pre: Preprocessor) -> None:
    def ask(frequency: float, rid: str) -> PreparedRequest:
        clip = AudioPart(wav_bytes(0.6, frequency), "wav")  # 60 frames: 15 tokens
        return prepare(pre, TextPart("transcribe"), clip, picture(2), rid=rid)

    first, same, different = ask(440.0, "a"), ask(440.0, "b"), ask(880.0, "c")
    assert [s.kind for s in first.media] == ["audio", "image"] and first.media[0].num_tokens == 15
    outputs, _, _, cached = run_core(model, [[first], [same], [different]], 5)
    assert cached["b"] > cached["c"] == first.media[0].start // BLOCK * BLOCK
    for request in (first, same, different):
        assert outputs[request.request_id] == greedy_reference(model, request, 5)


def test_preempted_media_requests_recompute_the_same_answer(model: MuseForCausalLM, pre: Preprocessor) -> None:
    requests = [prepare(pre, TextPart(f"look {i}"), picture(10 + i), rid=f"p{i}") for i in range(4)]
    # 24 blocks of 4 tokens cannot hold four sequences of ~38 tokens at once.
    outputs, preemptions, blocks, _ = run_core(model, [requests], 10, num_blocks=24)
    assert preemptions > 0
    for request in requests:
        assert outputs[request.request_id] == greedy_reference(model, request, 10)
    assert blocks.num_free_blocks == blocks.num_blocks


async def test_engine_streams_the_reference_answer_and_counts_media_tokens(
    model: MuseForCausalLM, pre: Preprocessor, tokenizer: MuseTokenizer
) -> None:
    request = prepare(pre, TextPart("look"), picture(3), TextPart("and listen"), AudioPart(wav_bytes(0.2), "wav"))
    pool = POOL.model_copy(update={"engine": POOL.engine.model_copy(update={"max_prefill_chunk": 7})})
    engine = build_engine(pool, MuseFormat(tokenizer), media=MEDIA)
    try:
        chunks = [chunk async for chunk in engine.generate(request)]
    finally:
        engine.shutdown()
    state = RequestState(request, tokenizer, MuseFormat(tokenizer).markers)
    for token in greedy_reference(model, request, request.max_output_tokens):
        state.append(token)
        if state.finish is not None:
            break
    assert "".join(c.text for c in chunks) == state.take_chunk().text
    assert chunks[-1].usage.prompt_tokens == request.num_prompt_tokens == len(request.prompt_token_ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no GPU")
async def test_media_on_the_gpu_gives_the_cpu_answer(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    request = prepare(pre, TextPart("look"), picture(3), TextPart("and listen"), AudioPart(wav_bytes(0.2), "wav"))
    answers = []
    for device in ("cpu", "cuda"):
        pool = POOL.model_copy(update={"model": POOL.model.model_copy(update={"device": device})})
        engine = build_engine(pool, MuseFormat(tokenizer), media=MEDIA)
        try:
            answers.append([chunk.text async for chunk in engine.generate(request)])
        finally:
            engine.shutdown()
    assert "".join(answers[0]) == "".join(answers[1])


async def test_a_text_only_engine_refuses_media_alone(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    engine = build_engine(POOL, MuseFormat(tokenizer))  # no media limits: a text-only dummy model
    try:
        with pytest.raises(InvalidArgument, match="takes no image input"):
            async for _ in engine.generate(prepare(pre, TextPart("look"), picture(4))):
                pass
        assert engine.scheduler.num_waiting == engine.scheduler.num_running == 0
    finally:
        engine.shutdown()


def test_step_slices_reassemble_the_rows_and_only_media_blocks_get_keys(pre: Preprocessor) -> None:
    request = prepare(pre, TextPart("look"), picture(5))
    (image,) = request.media
    pieces = [step_slices(request.media, first, CHUNK) for first in range(0, request.num_prompt_tokens, CHUNK)]
    flat = [s for step in pieces for s in step]
    assert b"".join(s.rows for s in flat) == image.features
    assert sum(s.num_rows for s in flat) == image.num_tokens
    assert all(0 <= s.offset < CHUNK for s in flat)
    keys = block_media_keys(request.media, BLOCK)
    first_block, last_block = image.start // BLOCK, (image.start + image.num_tokens - 1) // BLOCK
    assert sorted(keys) == list(range(first_block, last_block + 1))
    assert len(set(keys.values())) == len(keys)  # the offset differs per block
