"""Build a MuseForCausalLM: seeded dummy weights, a Hugging Face safetensors directory or a GGUF file.

The module is first built on the meta device and materialised once on the target device
in the target dtype, so weights are never allocated twice.

A checkpoint with media projectors declares their feature dims in config.json
(`muse_image_feature_dim`, `muse_audio_feature_dim`) and holds `model.image_projector.*` /
`model.audio_projector.*`; a text-only (e.g. Hugging Face Llama) checkpoint declares none and
its pool takes no media.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from museserve.checkpoint.paths import resolve_checkpoint_path
from museserve.model.config import MuseConfig
from museserve.model.cpu_linear import CPU_GEMMS, can_pack, pack_linears, pack_tied_head, weight_bytes
from museserve.model.muse import MuseForCausalLM

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("dummy", "safetensors", "gguf")
DUMMY_INIT_STD = 0.02
_MAX_NAMES_IN_ERROR = 10


def check_media_dims(config: MuseConfig, expected: Mapping[str, int], name: str) -> None:
    """Each projector the model has must take the rows the preprocess tier produces."""
    for kind, dim in config.media_feature_dims.items():
        if dim != expected.get(kind):
            raise ValueError(
                f"pool {name}: the model's {kind} projector takes {dim} values per token; "
                f"preprocess.media produces {expected.get(kind)}"
            )


def build_model(
    config: MuseConfig,
    *,
    load_format: str = "dummy",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
    device: torch.device | str = "cpu",
    prune: Callable[[MuseForCausalLM], None] | None = None,
    cpu_gemm: str = "onednn",
) -> MuseForCausalLM:
    """A model in eval mode with gradients off, on `device` in `dtype`.

    `prune` drops modules from the model while it is still on the meta device (a pipeline
    stage keeps only its layers); the rest keep their names, so they get the same dummy
    values or checkpoint tensors as in the whole model, and only they are allocated.
    `cpu_gemm` "onednn": on a CPU, linear layers run on oneDNN with weights packed once
    (`cpu_linear`), where it takes the dtype; "torch" keeps `nn.Linear`."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format: unknown value {load_format!r}; expected one of {LOAD_FORMATS}")
    if cpu_gemm not in CPU_GEMMS:
        raise ValueError(f"cpu_gemm: unknown value {cpu_gemm!r}; expected one of {CPU_GEMMS}")
    if load_format != "dummy" and path is None:
        raise ValueError(f"path: required when load_format is {load_format!r}")
    with torch.device("meta"):
        model = MuseForCausalLM(config)
    whole = {name for name, _ in model.named_parameters()}
    if prune is not None:
        prune(model)
    model = model.to(dtype=dtype).to_empty(device=torch.device(device))
    model.requires_grad_(False)
    with torch.no_grad():
        if load_format == "dummy":
            _init_dummy(model, seed)
        else:
            assert path is not None
            source = resolve_checkpoint_path(str(path))
            _load_tensors(model, _checkpoint_tensors(load_format, source), whole, source)
    if cpu_gemm == "onednn" and can_pack(torch.device(device), dtype):
        count = pack_linears(model) + pack_tied_head(model)
        logger.info(
            "%d linear layers on oneDNN with packed %s weights: %.1f MiB of weights with the packed copies",
            count,
            dtype,
            weight_bytes(model) / 2**20,
        )
    return model.eval()


def resolve_device(device: str) -> torch.device:
    """A model config's device: "auto" is cuda when PyTorch sees a GPU, else cpu; "cuda" with no
    GPU is an error here rather than at the first tensor."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda asked for, but PyTorch sees no GPU")
    return torch.device(device)


def _name_seed(seed: int, name: str) -> int:
    """A 63-bit seed per parameter, so each tensor depends only on (seed, name, shape)."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _init_dummy(model: MuseForCausalLM, seed: int) -> None:
    """Normal(0, 0.02) matrices and embeddings, ones for norms, zeros for biases.

    Values are drawn on the CPU in float32, so they match across machines and devices.
    """
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            generator = torch.Generator(device="cpu").manual_seed(_name_seed(seed, name))
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, DUMMY_INIT_STD, generator=generator)
            param.copy_(values)


def _is_ignorable(name: str, config: MuseConfig) -> bool:
    # Older checkpoints store the rotary table; tied checkpoints may still carry lm_head.
    return name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight")


def _format_names(names: set[str]) -> str:
    shown = sorted(names)[:_MAX_NAMES_IN_ERROR]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more else "")


# (file, Hugging Face parameter name, shape, load): `load` reads the tensor only when called, so
# the tensors of modules a pipeline stage pruned are never read.
CheckpointTensor = tuple[str, str, tuple[int, ...], Callable[[], Tensor]]


def _checkpoint_tensors(load_format: str, source: Path) -> Iterator[CheckpointTensor]:
    if load_format == "gguf":
        from museserve.checkpoint.gguf import gguf_tensors  # numpy only; dequantizes to float32

        for name, shape, read in gguf_tensors(source):
            yield source.name, name, shape, lambda read=read: torch.from_numpy(read())
        return
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {source}")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                shape = tuple(reader.get_slice(name).get_shape())
                yield file.name, name, shape, lambda name=name: reader.get_tensor(name)


def _load_tensors(model: MuseForCausalLM, tensors: Iterator[CheckpointTensor], whole: set[str], source: Path) -> None:
    """`whole`: the parameter names of the unpruned model; checkpoint tensors of pruned
    modules are skipped, names unknown to the whole model are errors."""
    params: dict[str, Tensor] = dict(model.named_parameters())
    loaded: set[str] = set()
    unexpected: set[str] = set()
    for file, name, shape, load in tensors:
        if name not in params:
            if name not in whole and not _is_ignorable(name, model.config):
                unexpected.add(name)
            continue
        param = params[name]
        if shape != tuple(param.shape):
            raise ValueError(f"{file}: {name} has shape {shape}, the model expects {tuple(param.shape)}")
        param.copy_(load())
        loaded.add(name)
    missing = set(params) - loaded
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys: {_format_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_format_names(unexpected)}")
        raise ValueError(f"checkpoint {source} does not match the model; " + "; ".join(problems))
