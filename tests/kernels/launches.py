"""Records what a wrapper would launch, without running it: kernel, arguments and options. The
sm_90a compile test builds exactly those variants, so its signatures cannot drift from the code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
import torch
import triton

TRITON_TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int32: "i32",
    torch.int64: "i64",
}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass
class Launch:
    kernel: Any
    grid: tuple[int, ...]
    args: dict[str, Any]  # by parameter name, constexprs included
    options: dict[str, int] = field(default_factory=dict)

    def compile_sources(self) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int, ...], list]]:
        """(signature, constexprs, attrs) as triton's JIT would specialise them: pointers and
        integers that are multiples of 16 carry tt.divisibility=16."""
        signature, constexprs, attrs = {}, {}, {}
        for index, param in enumerate(self.kernel.params):
            value = self.args[param.name]
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                constexprs[param.name] = value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = "*" + TRITON_TYPES[value.dtype]
                attrs[(index,)] = [["tt.divisibility", 16]]
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{param.name}: unexpected launch argument {value!r}")
            elif isinstance(value, float):
                signature[param.name] = "fp32"
            else:
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        return signature, constexprs, attrs


@contextmanager
def recorded(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Iterator[list[Launch]]:
    """Within: `module`'s wrappers record their launches (on any device, meta included) instead of running."""
    launches: list[Launch] = []

    def launcher(kernel: Any, device: torch.device, op: str) -> Any:
        class Grid:
            def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
                def launch(*args: Any, **kwargs: Any) -> None:
                    names = [p.name for p in kernel.params]
                    options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
                    launches.append(Launch(kernel, grid, {**dict(zip(names, args, strict=False)), **kwargs}, options))

                return launch

        return Grid()

    with monkeypatch.context() as patch:
        patch.setattr(module, "launcher", launcher)
        yield launches


def compile_for_h100(launch: Launch) -> Any:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = launch.compile_sources()
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch.options)
