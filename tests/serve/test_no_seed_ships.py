"""No file that a run, `dprad export` or the API produces holds a value from which a DP draw can be
regenerated. The values that seed DP generators are listed: the run's key (read from ``noise.key`` while the
run is interrupted, the only time it exists) and every stream key derived from it; each is searched for, in
every encoding a writer might use, through every file of the finished run, of its export and every answer
of the served export."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from test_serve import ADMIN, CLIENT, auth, write_keys

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.export import export_run
from dprad.privacy.noise import NoiseSource, _derive
from dprad.serve.app import create_app, running
from dprad.stages.train import StepInfo, train

# every purpose a run derives a stream or child key for (privacy/noise.py; stages/fit.py, finish.py, train.py)
PURPOSES = ("stream:sampler", "stream:gradient", "stream:thresholds", "child:probe")


def forms(key: bytes) -> list[bytes]:
    """The key and its derived keys as raw bytes, hex, base64 and decimal integers (either byte order)."""
    values = [key] + [_derive(key, p).to_bytes(32, "little") for p in PURPOSES]
    out: list[bytes] = []
    for v in values:
        out += [v, v.hex().encode(), base64.b64encode(v)]
        out += [str(int.from_bytes(v, order)).encode() for order in ("little", "big")]
    return out


def test_no_shipped_file_or_answer_holds_a_value_that_seeds_a_dp_draw(
    tiny_bert: Path, tmp_path: Path
) -> None:
    data = tmp_path / "s.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=160, seed=9)), CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(epsilon=2.0),
        train=TrainConfig(mode="head", epochs=2.0, batch_size=32, checkpoint_every=1),
    )
    run = tmp_path / "run"

    def crash(info: StepInfo) -> None:
        if info.step == 2:
            raise KeyboardInterrupt("interrupted: the only moment the key is on disk")

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, on_step=crash)
    key = (run / "noise.key").read_bytes()
    assert NoiseSource.load(run / "noise.key").key == key
    train(cfg, run)  # resumes with that key and finishes
    secrets_ = forms(key)

    out = export_run(run, tmp_path / "export")
    shipped = {p: p.read_bytes() for d in (run, out) for p in d.rglob("*") if p.is_file()}
    assert not [p for p in shipped if p.name in ("noise.key", "checkpoint.pt")]
    keys = write_keys(tmp_path / "keys.yaml")
    app = create_app(out, keys_path=keys, state_dir=tmp_path / "state")
    with running(app) as url:
        answers = [httpx.get(f"{url}/v1/model", headers=auth(who)).content for who in (CLIENT, ADMIN)] + [
            httpx.post(
                f"{url}/v1/classify", headers=auth(CLIENT), json={"reports": [{"text": "No pneumothorax."}]}
            ).content
        ]
    for state in (tmp_path / "state").rglob("*"):
        if state.is_file():
            shipped[state] = state.read_bytes()
    for where, blob in [*shipped.items(), *(("answer", a) for a in answers)]:
        leaked = [s for s in secrets_ if s in blob]
        assert not leaked, where
