"""The preprocess tier's section: tokenizer, and how images and audio become tokens."""

from __future__ import annotations

from pydantic import Field, model_validator

from museserve.config.base import DeploymentConfig, Section


class MediaLimits(Section):
    """Every bound is checked before the media is decoded further than its header."""

    max_image_bytes: int = Field(20 << 20, ge=1, description="Bytes of one encoded image.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Width x height of one image, read from its header before decoding."
    )
    image_patch_size: int = Field(16, ge=2, le=64, description="Side in pixels of one image patch (one token).")
    max_image_tokens: int = Field(
        1024, ge=1, description="Patches (tokens) of one image; larger images are downscaled to fit."
    )
    max_images_per_request: int = Field(16, ge=0, description="Images in one request.")
    max_request_media_tokens: int = Field(8192, ge=1, description="Image and audio tokens of one request together.")
    max_audio_bytes: int = Field(25 << 20, ge=1, description="Bytes of one encoded audio clip.")
    max_audio_seconds: float = Field(600.0, gt=0, description="Duration of one audio clip.")
    max_audio_clips_per_request: int = Field(8, ge=0, description="Audio clips in one request.")
    audio_sample_rate: int = Field(16_000, ge=8000, description="Clips are resampled to this rate.")
    audio_mel_bins: int = Field(80, ge=8, le=256, description="Log-mel bins per frame.")
    audio_frames_per_token: int = Field(4, ge=1, description="10 ms log-mel frames stacked into one token.")
    allow_image_urls: bool = Field(False, description="Fetch http(s) image URLs (public addresses only).")
    url_timeout_s: float = Field(5.0, gt=0, description="Bound on one URL fetch, redirects included.")
    max_url_redirects: int = Field(3, ge=0, description="Redirects followed per URL; each is checked again.")

    @property
    def image_feature_dim(self) -> int:
        """Values per image token: one RGB patch of image_patch_size x image_patch_size pixels."""
        return 3 * self.image_patch_size * self.image_patch_size

    @property
    def audio_feature_dim(self) -> int:
        """Values per audio token: audio_frames_per_token log-mel frames of audio_mel_bins."""
        return self.audio_mel_bins * self.audio_frames_per_token

    @model_validator(mode="after")
    def _request_can_hold_one_image(self) -> MediaLimits:
        if self.max_image_tokens > self.max_request_media_tokens:
            raise ValueError("max_image_tokens exceeds max_request_media_tokens")
        return self


class PreprocessConfig(Section):
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=256)
    tokenizer: str | None = Field(None, description="tokenizer.json file or directory; none: the bundled one.")
    media: MediaLimits = MediaLimits()
    call_timeout_s: float = Field(
        4.0,
        gt=0,
        description="The gateway's bound on one call to this tier (images and audio only; text is tokenized in "
        "the gateway). Past it the request is UNAVAILABLE (retry), so a call queued for a replica that died, "
        "or for a tier with no replica, ends in seconds. Keep it well above the slowest media the limits allow.",
    )
