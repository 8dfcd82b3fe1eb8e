"""Images and audio in the prompt: placeholders and segments, limits, and the model's side
(projectors, `embed`, checkpoints with and without them). The engine's side is in
test_multimodal_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from museserve.config import EngineConfig, PoolConfig
from museserve.domain import AudioPart, ChatRequest, ImagePart, Message, Role, TextPart
from museserve.errors import InvalidArgument, MuseError
from museserve.preprocess.audio import load_audio
from museserve.preprocess.images import load_image
from museserve.preprocess.pool_model import PoolModel, pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.runner.loading import load_pool_model
from tests.media_samples import SMALL_MEDIA, png_bytes, wav_bytes

MEDIA = SMALL_MEDIA  # 32 x 40 images: 20 tokens of 192; 0.2 s of audio: 5 tokens of 64
POOL = PoolConfig(
    name="muse-mm", engine=EngineConfig(context_length=512, max_output_tokens=64, default_max_output_tokens=16)
)
IMAGE, IMAGE_TOKENS = png_bytes(32, 40), 20
AUDIO, AUDIO_TOKENS = wav_bytes(0.2), 5


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def pre(tokenizer: MuseTokenizer) -> Preprocessor:
    return Preprocessor(PoolModel.muse(tokenizer), MEDIA, request_timeout_s=30)


def chat(*parts: TextPart | ImagePart | AudioPart) -> ChatRequest:
    return ChatRequest(request_id="mm", messages=(Message(Role.USER, parts),))


def image(data: bytes = IMAGE) -> ImagePart:
    return ImagePart(data=data, mime_type="image/png")


def error_of(pre: Preprocessor, request: ChatRequest, pool: PoolConfig = POOL) -> MuseError:
    with pytest.raises(MuseError) as info:
        pre.prepare(request, pool)
    return info.value


# ---- template placement and segments ----


def test_each_part_becomes_its_placeholders_at_its_place(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    request = chat(
        TextPart("look"), image(), image(png_bytes(32, 40, seed=1)), TextPart("hear"), AudioPart(AUDIO, "wav")
    )
    prepared = pre.prepare(request, POOL)
    ids = prepared.prompt_token_ids
    first, second, clip = prepared.media
    assert [s.kind for s in prepared.media] == ["image", "image", "audio"]
    assert (first.num_tokens, second.num_tokens, clip.num_tokens) == (IMAGE_TOKENS, IMAGE_TOKENS, AUDIO_TOKENS)
    assert second.start == first.start + IMAGE_TOKENS  # adjacent parts, adjacent runs
    text_before = tokenizer.encode_text("look")
    assert ids[first.start - len(text_before) : first.start] == tuple(text_before)
    assert ids[clip.start - len(tokenizer.encode_text("hear")) : clip.start] == tuple(tokenizer.encode_text("hear"))
    for segment, placeholder in ((first, tokenizer.image_id), (second, tokenizer.image_id), (clip, tokenizer.audio_id)):
        assert set(ids[segment.start : segment.start + segment.num_tokens]) == {placeholder}
    assert ids.count(tokenizer.image_id) == 2 * IMAGE_TOKENS and ids.count(tokenizer.audio_id) == AUDIO_TOKENS
    expected = load_image(IMAGE, "image/png", MEDIA, "f")
    assert (first.features, first.digest, first.feature_dim) == (expected.rows, expected.digest, 192)
    assert first.digest != second.digest
    assert clip.features == load_audio(AUDIO, "wav", MEDIA, "f").rows and clip.feature_dim == 64


def test_media_tokens_are_counted_like_text(pre: Preprocessor) -> None:
    text_only = pre.count(chat(TextPart("look")), POOL).prompt_tokens
    with_media = chat(TextPart("look"), image(), AudioPart(AUDIO, "wav"))
    assert pre.count(with_media, POOL).prompt_tokens == text_only + IMAGE_TOKENS + AUDIO_TOKENS
    assert pre.prepare(with_media, POOL).num_prompt_tokens == pre.count(with_media, POOL).prompt_tokens


def test_a_data_url_image_equals_its_bytes(pre: Preprocessor) -> None:
    import base64

    url = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    from_url = pre.prepare(chat(ImagePart(url=url)), POOL).media[0]
    assert from_url == pre.prepare(chat(image()), POOL).media[0]


# ---- limits ----


def test_too_many_images_names_the_first_part_over(tokenizer: MuseTokenizer) -> None:
    pre = Preprocessor(
        PoolModel.muse(tokenizer), MEDIA.model_copy(update={"max_images_per_request": 1}), request_timeout_s=30
    )
    error = error_of(pre, chat(image(), TextPart("and"), image()))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[2].image"


def test_too_many_audio_clips_names_the_part(tokenizer: MuseTokenizer) -> None:
    pre = Preprocessor(
        PoolModel.muse(tokenizer), MEDIA.model_copy(update={"max_audio_clips_per_request": 0}), request_timeout_s=30
    )
    error = error_of(pre, chat(TextPart("hear"), AudioPart(AUDIO, "wav")))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[1].audio"


def test_media_tokens_of_the_request_are_bounded(tokenizer: MuseTokenizer) -> None:
    limits = MEDIA.model_copy(update={"max_request_media_tokens": IMAGE_TOKENS + AUDIO_TOKENS - 1})
    pre = Preprocessor(PoolModel.muse(tokenizer), limits, request_timeout_s=30)
    assert pre.prepare(chat(image()), POOL).media  # one image fits
    error = error_of(pre, chat(image(), AudioPart(AUDIO, "wav")))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[1].audio"
    assert str(IMAGE_TOKENS + AUDIO_TOKENS) in str(error)


def test_media_tokens_count_against_the_context_window(pre: Preprocessor) -> None:
    small = PoolConfig(
        name="tiny-window", engine=EngineConfig(context_length=24, max_output_tokens=4, default_max_output_tokens=4)
    )
    assert pre.prepare(chat(TextPart("look")), small).num_prompt_tokens < 16
    error = error_of(pre, chat(TextPart("look"), image()), small)
    assert isinstance(error, InvalidArgument) and error.field == "messages"


def test_corrupt_media_names_the_part(pre: Preprocessor) -> None:
    error = error_of(pre, chat(TextPart("look"), image(IMAGE[:60])))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[1].image"
    error = error_of(pre, chat(AudioPart(AUDIO[:30], "wav")))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[0].audio"


# ---- the model's projectors ----


def test_a_pool_without_projectors_refuses_media_before_any_decoding(tokenizer: MuseTokenizer) -> None:
    pre = Preprocessor(PoolModel.muse(tokenizer, frozenset({"audio"})), MEDIA, request_timeout_s=30)
    error = error_of(pre, chat(TextPart("look"), image(b"not even an image")))
    assert isinstance(error, InvalidArgument) and error.field == "messages[0].content[1].image"
    assert "muse-mm takes no image input" in str(error)
    assert pre.prepare(chat(AudioPart(AUDIO, "wav")), POOL).media[0].kind == "audio"


def test_embed_puts_the_projected_rows_at_their_positions(tokenizer: MuseTokenizer) -> None:
    model = load_pool_model(POOL, tokenizer.vocab_size, MEDIA)
    ids = torch.tensor([1, 4, 13, 13, 13, 7])
    rows = torch.randn(3, MEDIA.image_feature_dim)
    positions = torch.tensor([2, 3, 4])
    with torch.inference_mode():
        embeds = model.embed(ids, {"image": rows}, {"image": positions})
        plain = model.embed(ids)
        assert torch.equal(embeds[[0, 1, 5]], plain[[0, 1, 5]])
        assert torch.allclose(embeds[2:5], model.model.image_projector(rows))
    assert model.model.audio_projector.weight.shape == (model.config.hidden_size, MEDIA.audio_feature_dim)
    text_only = load_pool_model(POOL, tokenizer.vocab_size)
    assert text_only.model.image_projector is None
    with pytest.raises(ValueError, match="no image projector"):
        text_only.embed(ids, {"image": rows}, {"image": positions})


def save_checkpoint(model: torch.nn.Module, directory: Path) -> Path:
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    return directory


def test_checkpoints_carry_their_projectors_or_take_no_media(tokenizer: MuseTokenizer, tmp_path: Path) -> None:
    source = load_pool_model(POOL, tokenizer.vocab_size, MEDIA)
    (tmp_path / "mm").mkdir()
    (tmp_path / "text").mkdir()
    mm = PoolConfig(
        name="mm", model={"load_format": "safetensors", "path": str(save_checkpoint(source, tmp_path / "mm"))}
    )
    loaded = load_pool_model(mm, tokenizer.vocab_size, MEDIA)
    assert torch.equal(loaded.model.image_projector.weight, source.model.image_projector.weight)
    assert pool_model(mm, MEDIA).media_kinds == {"image", "audio"}
    with pytest.raises(ValueError, match="image projector takes 192"):  # a preprocess that cuts other patches
        pool_model(mm, MEDIA.model_copy(update={"image_patch_size": 16}))

    text_dir = save_checkpoint(load_pool_model(POOL, tokenizer.vocab_size), tmp_path / "text")  # an HF Llama layout
    text = PoolConfig(name="llama", model={"load_format": "safetensors", "path": str(text_dir)})
    assert pool_model(text, MEDIA).media_kinds == frozenset()
    assert load_pool_model(text, tokenizer.vocab_size, MEDIA).config.media_feature_dims == {}
    pre = Preprocessor(pool_model(text, MEDIA), MEDIA, request_timeout_s=30)
    error = error_of(pre, chat(TextPart("look"), image()), text)
    assert isinstance(error, InvalidArgument) and "model llama takes no image input" in str(error)
