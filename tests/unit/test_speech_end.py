from __future__ import annotations

import numpy as np
import pytest

from museserve.preprocess.speech_end import SpeechEndDetector


def level(seconds: float, rate: int, dbfs: float, seed: int = 0) -> np.ndarray:
    """[seconds * rate] float32 noise whose RMS is `dbfs` relative to full scale."""
    noise = np.random.default_rng(seed).standard_normal(round(seconds * rate))
    return (noise / np.sqrt((noise**2).mean()) * 10 ** (dbfs / 20)).astype(np.float32)


def turn(rate: int, speech_s: float = 0.5, after_s: float = 1.0) -> np.ndarray:
    """0.3 s of room noise, `speech_s` of speech, `after_s` of room noise."""
    return np.concatenate([level(0.3, rate, -70, 1), level(speech_s, rate, -20, 2), level(after_s, rate, -70, 3)])


def first_end(detector: SpeechEndDetector, audio: np.ndarray, sizes: list[int]) -> int | None:
    """The number of samples pushed when push first returns True (None: never)."""
    start = 0
    for size in sizes:
        if detector.push(audio[start : start + size]):
            return start + size
        start += size
    return None


def chunk_sizes(total: int, seed: int, largest: int = 2000) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, largest, size=total // (largest // 2) + 2 * largest).tolist()
    return [s for s in np.diff(np.minimum(np.cumsum([0, *sizes]), total)).tolist() if s > 0]


@pytest.mark.parametrize("rate", [16_000, 8_000, 44_100, 48_000])
@pytest.mark.parametrize("silence_ms", [200, 500, 505])
def test_ends_after_the_silence_whatever_the_chunks(rate: int, silence_ms: int):
    audio = turn(rate)
    frame = round(rate * 0.01)
    speech_end = round(0.8 * rate)  # a frame boundary: the first quiet frame starts here
    expected = speech_end + -(-silence_ms // 10) * frame  # the end of the last quiet frame needed
    for seed in range(3):
        sizes = chunk_sizes(len(audio), seed)
        pushed = first_end(SpeechEndDetector(rate, silence_ms), audio, sizes)
        assert pushed is not None
        chunk = sizes[np.searchsorted(np.cumsum(sizes), pushed)]
        assert pushed - chunk < expected <= pushed  # the push holding the frame that completes the silence
    assert first_end(SpeechEndDetector(rate, silence_ms), audio, [frame] * (len(audio) // frame)) == expected
    assert first_end(SpeechEndDetector(rate, silence_ms), audio, [len(audio)]) == len(audio)


def test_speech_ending_inside_a_frame_ends_within_a_frame_of_the_silence():
    rate, silence_ms = 16_000, 300
    audio = np.concatenate([level(0.5, rate, -20), level(1.0, rate, -70, 1)[:-77]])
    audio = np.concatenate([audio[77:], np.zeros(77, np.float32)])  # speech now ends 77 samples before a frame boundary
    speech_end = round(0.5 * rate) - 77
    pushed = first_end(SpeechEndDetector(rate, silence_ms), audio, [1] * len(audio))
    assert pushed is not None
    assert speech_end + silence_ms * 16 <= pushed <= speech_end + silence_ms * 16 + 160


def test_silence_alone_never_ends_a_turn():
    detector = SpeechEndDetector(16_000, 200)
    quiet = level(5.0, 16_000, -50)  # below the -45 dBFS threshold
    assert first_end(detector, quiet, chunk_sizes(len(quiet), 0)) is None
    assert not detector.speech_started


def test_speech_starts_after_50_ms_of_loud_frames():
    detector = SpeechEndDetector(16_000, 200)
    detector.push(level(0.3, 16_000, -70))
    detector.push(level(0.04, 16_000, -40))  # a 40 ms click is not speech
    detector.push(level(0.3, 16_000, -70))
    assert not detector.speech_started
    loud = level(0.1, 16_000, -40)
    detector.push(loud[:799])  # 49.94 ms: four whole frames and a partial one
    assert not detector.speech_started
    detector.push(loud[799:800])
    assert detector.speech_started


def test_the_end_is_reported_once_and_reset_starts_a_new_turn():
    rate = 16_000
    detector = SpeechEndDetector(rate, 300)
    assert first_end(detector, turn(rate), [160] * 300) is not None
    assert not detector.push(level(1.0, rate, -70))  # still silent: no second end
    assert not detector.push(turn(rate))  # nor after more speech, before the reset
    detector.reset()
    assert not detector.speech_started
    assert first_end(detector, turn(rate), [333] * 100) is not None
    assert detector.speech_started


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="silence_ms"):
        SpeechEndDetector(16_000, 0)
    with pytest.raises(ValueError, match="mono"):
        SpeechEndDetector(16_000, 200).push(np.zeros((4, 2), np.float32))
