"""Energy-based end of speech: a turn ends after speech followed by `silence_ms` of quiet.

The audio is cut into 10 ms frames, counted from the first sample whatever the chunk sizes (a
partial frame waits for the next chunk). A frame is loud when its RMS, in dB relative to full
scale, is above the threshold. Speech has started after SPEECH_MIN_FRAMES consecutive loud frames
(a click is not speech); the end is the first run of ceil(silence_ms / 10) quiet frames after that.
"""

from __future__ import annotations

import math

import numpy as np

FRAME_S = 0.010
SPEECH_MIN_FRAMES = 5  # 50 ms of loud frames in a row


class SpeechEndDetector:
    def __init__(self, sample_rate_hz: int, silence_ms: int, threshold_db: float = -45.0):
        if sample_rate_hz < 100:
            raise ValueError(f"sample rate {sample_rate_hz} Hz is too low for 10 ms frames")
        if silence_ms <= 0:
            raise ValueError(f"silence_ms must be positive; got {silence_ms}")
        self._frame = round(sample_rate_hz * FRAME_S)  # samples per frame
        self._silence_frames = math.ceil(silence_ms / (FRAME_S * 1000))
        self._loud_power = 10 ** (threshold_db / 10)  # mean square of a frame at the threshold
        self._partial = np.empty(0, np.float32)  # [< frame] samples of the frame being filled
        self.reset()

    def reset(self) -> None:
        """Forget this turn's speech and silence; frames stay aligned to the stream's first sample."""
        self.speech_started = False  # speech seen in this turn
        self._ended = False
        self._loud_run = 0  # consecutive loud frames, up to SPEECH_MIN_FRAMES
        self._quiet_run = 0  # consecutive quiet frames since speech started

    def push(self, samples: np.ndarray) -> bool:
        """Float mono samples in [-1, 1]; True the first time this turn's speech has ended."""
        if samples.ndim != 1:
            raise ValueError(f"samples are [n] mono; got shape {samples.shape}")
        audio = np.concatenate([self._partial, samples.astype(np.float32)])
        whole = len(audio) // self._frame * self._frame
        self._partial = audio[whole:]
        if self._ended or whole == 0:
            return False
        frames = audio[:whole].astype(np.float64).reshape(-1, self._frame)  # [n, frame]
        loud = (frames * frames).mean(axis=1) > self._loud_power
        for is_loud in loud.tolist():
            if self._step(is_loud):
                self._ended = True
                return True
        return False

    def _step(self, loud: bool) -> bool:
        """One frame; True when it completes the silence after speech."""
        if not self.speech_started:
            self._loud_run = self._loud_run + 1 if loud else 0
            self.speech_started = self._loud_run >= SPEECH_MIN_FRAMES
            return False
        self._quiet_run = 0 if loud else self._quiet_run + 1
        return self._quiet_run >= self._silence_frames
