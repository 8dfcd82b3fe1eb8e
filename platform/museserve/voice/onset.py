"""Between turns: audio waits here until it holds speech, so silence (a microphone left open,
the quiet after an answer) neither opens a turn nor cuts an answer off.

The last `PREROLL_S` of audio before the onset goes into the turn with it: speech starts a
little before it is loud enough to count (SPEECH_MIN_FRAMES of frames over the threshold).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from museserve.preprocess.speech_end import SpeechEndDetector

PREROLL_S = 0.3


class SpeechOnset:
    def __init__(self, sample_rate_hz: int, threshold_db: float):
        self._detector = SpeechEndDetector(sample_rate_hz, silence_ms=1000, threshold_db=threshold_db)
        self._keep = round(sample_rate_hz * PREROLL_S)
        self._held: deque[np.ndarray] = deque()
        self._held_samples = 0

    def take(self, samples: np.ndarray) -> np.ndarray | None:
        """[n] float samples; once speech has started: the held pre-roll and these samples
        (and the onset is reset for the next turn); before that, None."""
        self._held.append(samples)
        self._held_samples += len(samples)
        while len(self._held) > 1 and self._held_samples - len(self._held[0]) >= self._keep:
            self._held_samples -= len(self._held.popleft())
        self._detector.push(samples)
        if not self._detector.speech_started:
            return None
        audio = np.concatenate(list(self._held))
        self.reset()
        return audio

    def reset(self) -> None:
        self._detector.reset()
        self._held.clear()
        self._held_samples = 0
