"""Every kernel, as its wrapper launches it at serving sizes, compiles for an H100 (sm_90a) on this
machine, GPU or not: a kernel that would not build for the GPU fails CI here."""

from __future__ import annotations

import pytest
import torch

from museserve_kernels import activation, cache_write, lora, norm, paged_attention, paged_prefill, rope
from tests.kernels.conftest import INTERPRETING
from tests.kernels.launches import Launch, compile_for_h100, recorded

pytestmark = [
    pytest.mark.skipif(INTERPRETING, reason="the kernels are interpreted in this process"),
    pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION"),
]
META = torch.device("meta")  # shapes and strides only: realistic sizes cost no memory


def launches_of(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    def empty(*shape: int, of: torch.dtype = dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=of, device=META)

    out: list[Launch] = []
    with recorded(monkeypatch, norm) as launches:
        norm.add_rmsnorm(empty(64, 8192), empty(64, 8192), empty(8192), 1e-5)
        norm.rmsnorm(empty(3, 4096), empty(4096), 1e-5)
    out += launches
    with recorded(monkeypatch, rope) as launches:
        rope.rotary_(empty(64, 64, 128), empty(64, 8, 128), empty(64, 128), empty(64, 128))
    out += launches
    with recorded(monkeypatch, activation) as launches:
        activation.silu_and_mul(empty(64, 2 * 28672))
    out += launches
    with recorded(monkeypatch, cache_write) as launches:
        cache_write.kv_write(empty(64, 8, 128), empty(64, 8, 128), empty(4096, 8, 128), empty(4096, 8, 128),
                             empty(64, of=torch.int64))  # fmt: skip
    out += launches
    with recorded(monkeypatch, paged_attention) as launches:
        for q_heads, block_size in ((64, 16), (8, 4), (32, 128)):  # GQA 8, 1 and 4
            tables, lengths = empty(128, 512, of=torch.int32), empty(128, of=torch.int32)
            cache = empty(65536, 8, 128)
            paged_attention.paged_decode(empty(128, q_heads, 128), cache, cache, tables, lengths, block_size)
        # Split-K: 4 long rows over a 262,144-token table width, 32/8 heads.
        tables, lengths = empty(4, 262_144 // 16, of=torch.int32), empty(4, of=torch.int32)
        cache = empty(1 << 20, 8, 128)
        paged_attention.paged_decode(empty(4, 32, 128), cache, cache, tables, lengths, 16)
    assert sum(launch.args.get("SPLIT", False) for launch in launches) == 1
    out += launches
    with recorded(monkeypatch, paged_prefill) as launches:
        # GQA 4 over chunks of up to 2048 new tokens (tiles of 128 rows); GQA 8 over 1 (16 rows).
        for q_heads, max_query_len in ((32, 2048), (64, 1)):
            tables, cache = empty(16, 8192, of=torch.int32), empty(1 << 20, 8, 128)
            starts, lengths = empty(17, of=torch.int32), empty(16, of=torch.int32)
            q = empty(4096, q_heads, 128)
            paged_prefill.paged_prefill(q, cache, cache, tables, starts, lengths, 16, max_query_len)
    out += launches
    with recorded(monkeypatch, lora) as launches:
        # 64 decode rows over 8 adapters of rank 16: q_proj (4096 -> 4096, its columns of a fused
        # q/k/v output) and gate_proj (4096 -> 14336); ranks 64 and 128 (expand's rank loop), an fp16 model.
        slots, t = empty(64, of=torch.int32), empty(64, 16, of=torch.float32)
        lora.lora_shrink(empty(64, 4096), empty(8, 16, 4096), slots)
        lora.lora_expand_(empty(64, 6144)[:, :4096], t, empty(8, 4096, 16), slots)
        lora.lora_expand_(empty(64, 14336), t, empty(8, 14336, 16), slots)
        lora.lora_shrink(empty(64, 4096), empty(8, 64, 4096), empty(64, of=torch.int64))
        lora.lora_expand_(empty(64, 14336), empty(64, 64, of=torch.float32), empty(8, 14336, 64), slots)
        lora.lora_expand_(empty(64, 4096), empty(64, 128, of=torch.float32), empty(8, 4096, 128), slots)
        half = torch.float16
        lora.lora_shrink(empty(64, 4096, of=half), empty(8, 16, 4096, of=half), slots)
        lora.lora_expand_(empty(64, 14336, of=half), t, empty(8, 14336, 16, of=half), slots)
    out += launches
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_every_kernel_compiles_for_sm90(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    launches = launches_of(dtype, monkeypatch)
    assert {launch.kernel.__name__ for launch in launches} == {
        "add_rmsnorm_kernel", "rotary_kernel", "silu_mul_kernel", "kv_write_kernel", "paged_decode_kernel",
        "merge_splits_kernel", "paged_prefill_kernel", "lora_shrink_kernel", "lora_expand_kernel",
    }  # fmt: skip
    for launch in launches:
        compiled = compile_for_h100(launch)
        assert compiled.asm["cubin"], launch.kernel.__name__
        assert ".target sm_90a" in compiled.asm["ptx"], launch.kernel.__name__
