"""Workload files: shipped files parse, errors name the key, keys come from the environment,
planning is seeded, and synthetic media decode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from museserve_loadtest.media import MediaCache, png_bytes, wav_bytes
from museserve_loadtest.plan import plan_requests
from museserve_loadtest.workload import WorkloadError, load_workload, parse_workload

WORKLOADS = Path(__file__).resolve().parents[2] / "loadtest" / "workloads"
SHIPPED = ("chat", "long-context", "multimodal", "contemplating", "rate-limit-probe")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workloads_parse_and_hold_no_secrets(name: str):
    path = WORKLOADS / f"{name}.yaml"
    workload = load_workload(path)
    assert workload.name == name and all(t.key_env for t in workload.tenants)
    assert "sk-" not in path.read_text()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "w", "prompt_words": {"dist": "lognormal", "mean": 10, "sigma": 0, "max": 50}}, "prompt_words.sigma"),
        ({"name": "w", "output_tokens": {"dist": "gaussian", "value": 3}}, "output_tokens"),
        ({"name": "w", "modes": [{"mode": "instant"}, {"mode": "dreaming"}]}, "modes[1].mode"),
        ({"name": "w", "modalities": [{"kind": "image", "width": 2}]}, "modalities[0].width"),
        ({"name": "w", "tenants": [{"name": "t", "api_key": "sk-literal"}]}, "tenants[0].api_key"),
        ({"name": "w", "shared_prefix": {"fraction": 1.5, "words": 10}}, "shared_prefix.fraction"),
        ({"modes": []}, "name"),
        ({"name": "w", "colour": "blue"}, "colour"),
    ],
)
def test_errors_name_the_key(data: dict, field: str):
    with pytest.raises(WorkloadError) as e:
        parse_workload(data, source="bad.yaml")
    assert e.value.field == field and str(e.value).startswith(f"bad.yaml: {field}: ")


def test_a_yaml_syntax_error_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(WorkloadError, match="broken.yaml"):
        load_workload(path)


def test_keys_come_from_the_named_variables():
    w = parse_workload({"name": "w", "tenants": [{"name": "a", "key_env": "KEY_A"}, {"name": "b"}]})
    assert w.keys({"KEY_A": "secret"}, default_key="dflt") == {"a": "secret", "b": "dflt"}


def test_an_unset_key_variable_sends_no_key_and_says_so(capsys: pytest.CaptureFixture[str]):
    w = parse_workload({"name": "w", "tenants": [{"name": "a", "key_env": "KEY_A"}]})
    assert w.keys({}) == {"a": None}
    assert "KEY_A is not set: tenant a sends no API key" in capsys.readouterr().err


def test_shipped_workloads_are_found_by_name():
    from museserve_loadtest.workload import SHIPPED_WORKLOADS, resolve_workload

    assert resolve_workload("chat") == SHIPPED_WORKLOADS / "chat.yaml"
    for path in SHIPPED_WORKLOADS.glob("*.yaml"):
        load_workload(path.stem)
    with pytest.raises(WorkloadError, match="not a shipped workload"):
        resolve_workload("no-such-workload")


def test_plan_mixes_are_seeded_and_follow_the_weights():
    w = parse_workload({
        "name": "w",
        "modes": [{"mode": "instant", "weight": 3}, {"mode": "contemplating", "weight": 1, "agents": 3}],
        "modalities": [{"kind": "text"}, {"kind": "image", "width": 16, "height": 8, "count": 2}],
        "prompt_words": {"dist": "uniform", "min": 5, "max": 9},
        "output_tokens": {"dist": "lognormal", "mean": 50, "sigma": 1.0, "min": 4, "max": 80},
        "shared_prefix": {"fraction": 0.5, "count": 2, "words": 20},
    })  # fmt: skip
    media = MediaCache()
    specs = plan_requests(w, 2000, {"default": "k"}, seed=5, media=media)
    assert [s.prompt for s in specs] == [s.prompt for s in plan_requests(w, 2000, {}, seed=5)]  # same n, same seed
    assert np.mean([s.mode == "instant" for s in specs]) == pytest.approx(0.75, abs=0.04)
    assert all(s.num_agents == 3 for s in specs if s.mode == "contemplating")
    assert np.mean([s.shared_prefix is not None for s in specs]) == pytest.approx(0.5, abs=0.04)
    assert all(4 <= s.max_output_tokens <= 80 for s in specs) and all(s.api_key == "k" for s in specs)
    with_prefix = [s for s in specs if s.shared_prefix == 0]
    assert len({s.prompt.split("\n")[0] for s in with_prefix}) == 1  # one shared prefix text
    assert all(len(s.images) == 2 for s in specs if s.images) and len(media) == 2  # cached per size and seed


def test_synthetic_media_decode():
    with Image.open(io.BytesIO(png_bytes(40, 24))) as image:
        image.load()
        assert image.size == (40, 24) and image.format == "PNG"
    samples, rate = sf.read(io.BytesIO(wav_bytes(0.5, 22_050)))
    assert rate == 22_050 and len(samples) == 11_025 and np.abs(samples).max() > 0.4
