"""On a GPU (skipped without one): the compiled kernels against their references on device (split-K
decode also replayed from a CUDA graph), and the tiny model's logits with the kernels (eager and
CUDA graphs) against the torch path."""

from __future__ import annotations

import pytest
import torch

from museserve.model import ops
from museserve.model.config import MuseConfig
from museserve.model.loader import build_model
from museserve.runner.kv_pool import PagedKVPool
from museserve.runner.model_runner import ModelRunner
from museserve_kernels import activation, cache_write, lora, norm, paged_attention, paged_prefill, rope, split_k
from tests.kernels.conftest import INTERPRETING
from tests.kernels.support import assert_close, readable, scattered_paged_cache, teacher_forced_plans

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs a CUDA device, compiled kernels"),
]
CUDA = torch.device("cuda")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, hidden", [(1, 4096), (37, 8192), (5, 257)])
def test_norm_kernels_on_device(dtype: torch.dtype, rows: int, hidden: int) -> None:
    x, r = torch.randn(2, rows, hidden, device=CUDA).to(dtype)
    w = torch.randn(hidden, device=CUDA).to(dtype)
    out, summed = norm.add_rmsnorm(x, r, w, 1e-5)
    ref_out, ref_summed = norm.add_rmsnorm_reference(x, r, w, 1e-5)
    assert torch.equal(summed, ref_summed)  # one rounding of an exact float32 sum, as torch does
    assert_close(out, ref_out, interpreted=False)
    assert_close(norm.rmsnorm(x, w, 1e-5), norm.rmsnorm_reference(x, w, 1e-5), interpreted=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_silu_and_cache_write_on_device(dtype: torch.dtype) -> None:
    q, k = torch.randn(33, 32, 128, device=CUDA).to(dtype), torch.randn(33, 8, 128, device=CUDA).to(dtype)
    angles = torch.rand(33, 64, device=CUDA) * 1000
    cos, sin = (torch.cat((f(angles), f(angles)), dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    ref_q, ref_k = rope.rotary_reference(q, k, cos, sin)
    rope.rotary_(q, k, cos, sin)
    assert_close(q, ref_q, interpreted=False)
    assert_close(k, ref_k, interpreted=False)
    x = torch.randn(19, 2 * 1408, device=CUDA).to(dtype)
    assert_close(activation.silu_and_mul(x), activation.silu_and_mul_reference(x), interpreted=False)
    caches = torch.randn(2, 512, 8, 128, device=CUDA).to(dtype)
    expected = caches.clone()
    slots = torch.randperm(512, device=CUDA)[:33]  # distinct, as the contract asks
    slots[::5] = -1  # padding rows: skipped
    cache_write.kv_write(k, k * 2, caches[0], caches[1], slots)
    cache_write.kv_write_reference(k, k * 2, expected[0], expected[1], slots)
    assert torch.equal(caches, expected)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize(
    "rows, rank, out_features", [(1, 16, 4096), (64, 16, 14336), (37, 12, 1000), (130, 64, 4100), (9, 200, 512)]
)
def test_lora_shrink_and_expand_on_device(dtype: torch.dtype, rows: int, rank: int, out_features: int) -> None:
    slots, in_features = 8, 4096
    lora_a = (torch.randn(slots, rank, in_features, device=CUDA) / in_features**0.5).to(dtype)
    lora_b = (torch.randn(slots, out_features, rank, device=CUDA) / rank**0.5).to(dtype)
    x = torch.randn(rows, in_features, device=CUDA).to(dtype)
    row_slots = torch.randint(-1, slots, (rows,), device=CUDA, dtype=torch.int32)
    t = lora.lora_shrink(x, lora_a, row_slots)
    expected_t = lora.reference_shrink(x, lora_a, row_slots)
    assert_close(t, expected_t, interpreted=False)  # float32 products of the same inputs: only the order differs
    fused = torch.randn(rows, 2 * out_features, device=CUDA).to(dtype)  # out: a row-strided column slice
    original = fused.clone()
    expected = fused[:, :out_features].clone()
    lora.lora_expand_(fused[:, :out_features], t, lora_b, row_slots)
    lora.reference_expand_(expected, expected_t, lora_b, row_slots)
    assert_close(fused[:, :out_features], expected, interpreted=False)
    assert torch.equal(fused[:, out_features:], original[:, out_features:])
    assert torch.equal(fused[row_slots < 0], original[row_slots < 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group, block_size", [(1, 16), (2, 4), (4, 16), (8, 32)])
def test_paged_decode_on_device(dtype: torch.dtype, group: int, block_size: int) -> None:
    kv_heads, head_dim, num_blocks = 4, 128, 2048
    lengths = torch.tensor([1, 15, 16, 17, 300, 1023, 2000], device=CUDA)
    width = int(-(-lengths.max() // block_size))
    tables = torch.randint(0, num_blocks, (len(lengths), width), device=CUDA, dtype=torch.int32)
    keys, values = torch.randn(2, num_blocks * block_size, kv_heads, head_dim, device=CUDA).to(dtype)
    q = torch.randn(len(lengths), kv_heads * group, head_dim, device=CUDA).to(dtype)
    out = paged_attention.paged_decode(q, keys, values, tables, lengths, block_size)
    expected = paged_attention.paged_decode_reference(q, keys, values, tables, lengths, block_size)
    assert_close(out, expected, interpreted=False)


def paged_cache_on_device(
    lengths: list[int], kv_heads: int, block_size: int, dtype: torch.dtype, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keys, values, tables = scattered_paged_cache(lengths, kv_heads, 128, block_size, torch.float32, width)
    return keys.to(CUDA, dtype), values.to(CUDA, dtype), tables.to(CUDA, torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 4, 8])
def test_paged_prefill_on_device(dtype: torch.dtype, group: int) -> None:
    kv_heads, block_size = 4, 16
    contexts, num_new = [1000, 2048, 300, 17, 5000], [1000, 100, 1, 17, 513]
    keys, values, tables = paged_cache_on_device(contexts, kv_heads, block_size, dtype)
    q = torch.randn(sum(num_new), kv_heads * group, 128, device=CUDA).to(dtype)
    starts = torch.tensor([0, *torch.tensor(num_new).cumsum(0).tolist()], device=CUDA, dtype=torch.int32)
    args = (keys, values, tables, starts, torch.tensor(contexts, device=CUDA), block_size)
    out = paged_prefill.paged_prefill(q, *args, max(num_new))
    assert_close(out, paged_prefill.paged_prefill_reference(q, *args), interpreted=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_decode_on_device_and_in_a_cuda_graph(dtype: torch.dtype) -> None:
    kv_heads, block_size, width = 8, 16, 65536
    lengths = [1, 700, 20000, width]
    assert split_k.decode_splits(4, kv_heads, width, split_k.sm_count(CUDA)) > 1
    keys, values, tables = paged_cache_on_device(lengths, kv_heads, block_size, dtype, width // block_size)
    q = torch.randn(4, kv_heads * 4, 128, device=CUDA).to(dtype)
    context_lens = torch.tensor(lengths, device=CUDA)
    safe = readable(tables, keys, block_size)

    def expected() -> torch.Tensor:
        return paged_attention.paged_decode_reference(q, keys, values, safe, context_lens, block_size)

    out = paged_attention.paged_decode(q, keys, values, tables, context_lens, block_size)  # compiles, outside capture
    assert_close(out, expected(), interpreted=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = paged_attention.paged_decode(q, keys, values, tables, context_lens, block_size)
    context_lens.copy_(torch.tensor([16, 1, 3000, 20000]))  # new lengths (within each row's blocks), read by the replay
    graph.replay()
    assert_close(captured, expected(), interpreted=False)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_tiny_model_logits_with_kernels_equal_the_torch_path(dtype: torch.dtype, tolerance: float) -> None:
    config = MuseConfig.named("tiny", vocab_size=2048)
    model = build_model(config, dtype=dtype, device=CUDA)
    plans, num_blocks = teacher_forced_plans([5, 17, 33, 64, 1], decode_steps=6, block_size=16, vocab=2048)

    def run(cuda_graphs: bool) -> list[torch.Tensor]:
        pool = PagedKVPool(config, num_blocks, 16, dtype=dtype, device=CUDA)
        runner = ModelRunner(model, pool, cuda_graphs=cuda_graphs)
        return [runner.execute(plan).float() for plan in plans]

    with ops.torch_reference_only():
        expected = run(cuda_graphs=False)  # the reference KV write syncs: no graphs
    for logits in (run(cuda_graphs=False), run(cuda_graphs=True)):
        for ours, theirs in zip(logits, expected, strict=True):
            assert ours.shape == theirs.shape
            assert float((ours - theirs).norm() / theirs.norm()) < tolerance
