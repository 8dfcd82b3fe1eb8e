"""The preprocess tier's section: tokenizer and media limits."""

from __future__ import annotations

from pydantic import Field

from museserve.config.base import DeploymentConfig, Section


class MediaLimits(Section):
    max_image_bytes: int = Field(20 << 20, ge=1, description="Bytes of one encoded image.")
    max_audio_bytes: int = Field(25 << 20, ge=1, description="Bytes of one encoded audio clip.")


class PreprocessConfig(Section):
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=256)
    tokenizer: str | None = Field(None, description="tokenizer.json file or directory; none: the bundled one.")
    media: MediaLimits = MediaLimits()
