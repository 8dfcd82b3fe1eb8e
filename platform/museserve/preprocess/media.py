"""Image and audio parts of a chat request to feature rows, placeholders and segments.

Per request, in prompt order: every media part is checked against the pool's model (it has a
projector for the kind) and the per-request counts before anything is fetched or decoded;
image URLs are fetched (async, only where `allow_image_urls`; `data:` URLs are decoded in
place); then each part is decoded to rows (`images.load_image`, `audio.load_audio`, CPU work
for a worker thread) and the request's media tokens are summed against
`max_request_media_tokens`. The chat template renders a part as its kind's placeholder
repeated `num_tokens` times; `media_segments` finds those runs in the rendered ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from museserve.config import MediaLimits
from museserve.domain import AudioPart, ChatRequest, ImagePart
from museserve.errors import Internal, InvalidArgument
from museserve.messages import MediaSegment
from museserve.preprocess.audio import AudioFeatures, load_audio
from museserve.preprocess.chat_format import MediaPart, MediaTokens
from museserve.preprocess.images import ImageFeatures, decode_data_url, load_image
from museserve.preprocess.url_fetch import ImageFetcher

ALL_KINDS = frozenset({"image", "audio"})
# (message index, part index) -> (encoded bytes, mime type) of an image URL fetched beforehand
Fetched = Mapping[tuple[int, int], tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class EncodedMedia:
    kind: str  # "image" or "audio"
    field: str  # messages[i].content[j]
    part: MediaPart
    features: ImageFeatures | AudioFeatures


class MediaEncoder:
    def __init__(self, limits: MediaLimits, kinds: frozenset[str] = ALL_KINDS, fetcher: ImageFetcher | None = None):
        self.limits = limits
        self.kinds = kinds  # what the pool's model has projectors for
        self._fetcher = fetcher if fetcher is not None or not limits.allow_image_urls else ImageFetcher(limits)

    def parts(self, request: ChatRequest, model: str) -> list[tuple[int, int, MediaPart]]:
        """(message, part, media part) in prompt order, after the checks that need no decoding."""
        found = []
        counts = {"image": 0, "audio": 0}
        caps = {"image": self.limits.max_images_per_request, "audio": self.limits.max_audio_clips_per_request}
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                if not isinstance(part, ImagePart | AudioPart):
                    continue
                kind = "image" if isinstance(part, ImagePart) else "audio"
                where = f"messages[{i}].content[{j}].{kind}"
                if kind not in self.kinds:
                    raise InvalidArgument(f"model {model} takes no {kind} input", field=where)
                counts[kind] += 1
                if counts[kind] > caps[kind]:
                    noun = "images" if kind == "image" else "audio clips"
                    raise InvalidArgument(f"at most {caps[kind]} {noun} are accepted per request", field=where)
                self._check_size(part, where)
                found.append((i, j, part))
        return found

    async def fetch(self, request: ChatRequest, model: str) -> dict[tuple[int, int], tuple[bytes, str]]:
        """Fetches the request's http(s) image URLs concurrently; nothing when URLs are off
        (`encode` then refuses them) or the request has none."""
        targets = [
            (i, j, part.url)
            for i, j, part in self.parts(request, model)
            if isinstance(part, ImagePart) and part.url is not None and not _is_data_url(part.url)
        ]
        if not targets or self._fetcher is None:
            return {}
        max_bytes = self.limits.max_image_bytes
        bodies = await asyncio.gather(
            *(self._fetcher.fetch(url, f"messages[{i}].content[{j}].image.url", max_bytes) for i, j, url in targets)
        )
        return {(i, j): body for (i, j, _), body in zip(targets, bodies, strict=True)}

    def encode(self, request: ChatRequest, model: str, fetched: Fetched | None = None) -> list[EncodedMedia]:
        """Every media part decoded to rows, in prompt order; CPU work."""
        out: list[EncodedMedia] = []
        total = 0
        for i, j, part in self.parts(request, model):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, AudioPart):
                kind, features = "audio", load_audio(part.data, part.format, self.limits, f"{where}.audio")
            else:
                data, mime = self._image_bytes(part, where, (fetched or {}).get((i, j)))
                kind, features = "image", load_image(data, mime, self.limits, f"{where}.image")
            expected = self.limits.image_feature_dim if kind == "image" else self.limits.audio_feature_dim
            if features.feature_dim != expected:
                raise Internal(f"{kind} encoder produced rows of {features.feature_dim}, the model takes {expected}")
            total += features.num_tokens
            if total > self.limits.max_request_media_tokens:
                raise InvalidArgument(
                    f"the request's images and audio need {total}+ tokens; "
                    f"at most {self.limits.max_request_media_tokens} are accepted",
                    field=f"{where}.{kind}",
                )
            out.append(EncodedMedia(kind, where, part, features))
        return out

    def _check_size(self, part: MediaPart, where: str) -> None:
        if isinstance(part, ImagePart) and part.data is not None and len(part.data) > self.limits.max_image_bytes:
            raise InvalidArgument(
                f"image is {len(part.data)} bytes; at most {self.limits.max_image_bytes} are accepted",
                field=f"{where}.data",
            )
        if isinstance(part, AudioPart) and len(part.data) > self.limits.max_audio_bytes:
            raise InvalidArgument(
                f"audio is {len(part.data)} bytes; at most {self.limits.max_audio_bytes} are accepted",
                field=f"{where}.data",
            )

    def _image_bytes(self, part: ImagePart, where: str, fetched: tuple[bytes, str] | None) -> tuple[bytes, str]:
        if part.data is not None:
            return part.data, part.mime_type
        url = part.url or ""
        if _is_data_url(url):
            data, mime = decode_data_url(url, f"{where}.image.url", self.limits.max_image_bytes)
            return data, part.mime_type or mime
        if not self.limits.allow_image_urls:
            raise InvalidArgument(
                "image URLs are not accepted by this service; send the image bytes or a data: URL",
                field=f"{where}.image.url",
            )
        if fetched is None:
            raise Internal(f"{where}: image URL was not fetched before encoding")
        return fetched


def _is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def placeholders(media: Sequence[EncodedMedia], media_ids: Mapping[str, int]) -> MediaTokens:
    """The chat format's media hook: each part, in order, as `num_tokens` placeholders of its
    kind (`media_ids`: the format's placeholder id per kind). One hook per render (it walks
    `media` once)."""
    pending: Iterator[EncodedMedia] = iter(media)

    def tokens(part: MediaPart) -> list[int]:
        encoded = next(pending, None)
        if encoded is None or encoded.part is not part:
            raise Internal("media parts were rendered out of order")
        return [media_ids[encoded.kind]] * encoded.features.num_tokens

    return tokens


def media_segments(
    ids: Sequence[int], media: Sequence[EncodedMedia], media_ids: Mapping[str, int]
) -> tuple[MediaSegment, ...]:
    """Where each part's placeholders landed in `ids`. Placeholders enter a prompt only through
    media parts (text encoding never yields a control token), so the k-th part owns the next
    `num_tokens` placeholder positions, which must be contiguous."""
    placeholder_ids = frozenset(media_ids.values())
    positions = [p for p, t in enumerate(ids) if t in placeholder_ids]
    segments = []
    taken = 0
    for encoded in media:
        n = encoded.features.num_tokens
        run = positions[taken : taken + n]
        if len(run) != n or run[-1] - run[0] != n - 1:
            raise Internal(f"{encoded.field}: placeholders are not where the template put them")
        f = encoded.features
        segments.append(MediaSegment(encoded.kind, run[0], n, f.feature_dim, f.rows, f.digest))
        taken += n
    if taken != len(positions):
        raise Internal("the prompt holds placeholders of no media part")
    return tuple(segments)
