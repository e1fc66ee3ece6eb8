"""``GET /v1/model`` and what serving a run requires: a non-admin key sees what a shareable file may say
(no local path, no size of the validation or test split, n stated as released outside the guarantee), an
admin key the run as written; a run whose DP noise is not secret is served only when forced, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from test_serve import ADMIN, CLIENT, auth, write_keys

from dprad import DpradError
from dprad.privacy.ledger import NOISE_WRITTEN, noise_source, noise_warning
from dprad.run import RunRecord
from dprad.serve.app import create_app, running


def test_non_admin_keys_see_no_local_path_and_no_split_size(old_run: Path, tmp_path: Path) -> None:
    ledger = RunRecord.open(old_run).ledger
    splits = json.loads((old_run / "splits.json").read_text())
    val, test = len(splits["val"]), len(splits["test"])
    written = (old_run / "privacy.json").read_text()
    assert f"the {val} validation reports" in written and "/tmp/fixgen" in written
    keys = write_keys(tmp_path / "keys.yaml")
    app = create_app(old_run, keys_path=keys, state_dir=tmp_path / "state", force=True)
    with running(app) as url:
        public = httpx.get(f"{url}/v1/model", headers=auth(CLIENT)).json()
        admin = httpx.get(f"{url}/v1/model", headers=auth(ADMIN)).json()
    text = json.dumps(public)
    for leak in (f"{val} validation", f"{test} test", "validation_reports", "/tmp/fixgen", str(tmp_path)):
        assert leak not in text, leak
    assert "metrics" not in public and public["privacy"]["numbers"]["epsilon"] == ledger.epsilon
    released = public["privacy"]["released_outside_guarantee"]
    assert released[0].startswith(
        f"the number of training patients, n = {ledger.dataset_size}: DP-SGD treats"
    )
    assert "the base model encoder and its pre-training data" in public["privacy"]["numbers"]["not_protected"]
    # the admin view is the run as written, its split sizes included
    assert (
        admin["privacy"]["numbers"]["parts"] == ledger.parts
        and admin["privacy"]["statement"] == ledger.statement
    )
    assert "metrics" in admin


def test_a_run_whose_noise_is_not_secret_is_served_only_when_forced(old_run: Path, tmp_path: Path) -> None:
    ledger = RunRecord.open(old_run).ledger
    assert noise_source(ledger) == NOISE_WRITTEN
    warning = noise_warning(ledger)
    assert warning is not None
    keys = write_keys(tmp_path / "keys.yaml")
    with pytest.raises(DpradError, match=r"dp-head: its DP noise is not secret") as err:
        create_app(old_run, keys_path=keys, state_dir=tmp_path / "state")
    assert "\n" not in str(err.value) and warning in str(err.value) and "--force" in str(err.value)
    assert not (tmp_path / "state").exists()  # refused before the server writes anything
    with running(create_app(old_run, keys_path=keys, state_dir=tmp_path / "state", force=True)) as url:
        model = httpx.get(f"{url}/v1/model", headers=auth(CLIENT)).json()
        body = {"reports": [{"text": "Small apical pneumothorax."}]}
        assert httpx.post(f"{url}/v1/classify", json=body, headers=auth(CLIENT)).status_code == 200
    assert model["privacy"]["noise_warning"] == warning
