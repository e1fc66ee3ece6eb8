"""What an export says must be true and no more: names and content hashes, never a local path; the number of
training units stated as released outside the guarantee and no other count of the private data; an epsilon
its own accounting event gives; no federated hospital's partial guarantee; a manifest that describes the run
it came from; and DP noise that is secret, or an export forced and saying so."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.export import export_run
from dprad.privacy.ledger import NOISE_SECRET, NOISE_STATED, noise_source, noise_warning
from dprad.run import RunRecord
from dprad.stages.train import train

SYNTH = SynthConfig(n_patients=160, seed=7, prevalence={"Pneumothorax": 0.08})
NOISE_SEED = 987_654_321  # a stated --noise-seed: a number no other field of a run holds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SYNTH), CHEXPERT14), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_bert: Path) -> dict[str, Path]:
    """Private heads (DP thresholds) with secret noise and with a stated --noise-seed, and a non-private head,
    trained with a feature cache: every local path a run records."""
    root = tmp_path_factory.mktemp("runs")

    def config(**privacy: Any) -> RunConfig:
        return RunConfig(
            data=DataConfig(path=str(corpus)),
            model=ModelConfig(name=str(tiny_bert), max_length=64),
            privacy=PrivacyConfig(accountant="rdp", **privacy),
            train=TrainConfig(mode="head", epochs=3.0, batch_size=64, feature_cache=str(root / "features")),
        )

    plans = {
        "head": config(epsilon=3.0),
        "seeded": config(epsilon=3.0, noise_seed=NOISE_SEED),
        "plain": config(),
    }
    return {name: train(cfg, root / name).run_dir for name, cfg in plans.items()}


def texts(root: Path) -> dict[str, str]:
    """Every text file of an export (JSON, Markdown), by its path inside it."""
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".json", ".md", ".txt")
    }


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``dprad ARGS`` as a user runs it: its exit status and what it printed on stderr."""
    with pytest.raises(SystemExit) as ex:
        main(args)
    return int(ex.value.code or 0), capsys.readouterr().err


def edited(run: Path, dest: Path, **ledger: Any) -> Path:
    """A copy of ``run`` whose privacy.json someone edited (written as Python's json writes NaN)."""
    shutil.copytree(run, dest)
    raw = json.loads((dest / "privacy.json").read_text())
    (dest / "privacy.json").write_text(json.dumps({**raw, **ledger}, indent=2))
    return dest


def test_an_export_names_files_and_hashes_its_data_never_a_local_path(
    runs: dict[str, Path], corpus: Path, tiny_bert: Path, tmp_path: Path, old_run: Path
) -> None:
    out = export_run(runs["head"], tmp_path / "ex")
    local = (str(corpus.parent), str(tiny_bert), str(runs["head"].parent))  # data, encoder, runs and cache
    for name, text in texts(out).items():
        assert not [p for p in local if p in text], name
    config = json.loads((out / "config.json").read_text())
    digest = hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert config["data"]["path"] == "synth.csv" and config["model"]["name"] == tiny_bert.name
    assert config["train"]["feature_cache"] is None and config["derived"]["model_dir"] == "encoder"
    assert config["derived"]["data_sha256"] == digest
    assert json.loads((out / "MANIFEST.json").read_text())["data"] == {"file": "synth.csv", "sha256": digest}
    card = (out / "MODEL_CARD.md").read_text()
    assert f"- Training data: `synth.csv` (format `auto`, SHA-256 `{digest}`)." in card
    # a run whose ledger names the base model's install path: the export names the model instead
    assert "/tmp/fixgen/encoder" in (old_run / "privacy.json").read_text()
    shared = export_run(old_run, tmp_path / "old", force_non_private=True)  # its noise is not secret
    assert not [name for name, text in texts(shared).items() if "/tmp/fixgen" in text]
    assert "the base model encoder and its pre-training data" in RunRecord.open(shared).ledger.not_protected
    # its LoRA adapters' config names the base model by yet another path (peft's base_model_name_or_path)
    lora = old_run.parent / "dp-lora"
    trained_at = json.loads((lora / "model" / "adapter" / "adapter_config.json").read_text())
    base_path = trained_at["base_model_name_or_path"]  # where the weights were rebuilt (conftest)
    assert Path(base_path).is_absolute() and base_path.endswith("encoder")
    shared = export_run(lora, tmp_path / "old-lora", force_non_private=True)
    assert not [name for name, text in texts(shared).items() if base_path in text or "/tmp/fixgen" in text]
    adapter = json.loads((shared / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "encoder"


def test_n_is_stated_as_released_and_no_other_count_of_the_private_data_ships(
    runs: dict[str, Path], tmp_path: Path, old_run: Path
) -> None:
    record = RunRecord.open(runs["head"])
    led = record.ledger
    assert led.privacy_unit == "patient"  # the synthetic corpus has repeat patients
    out = export_run(runs["head"], tmp_path / "ex")
    card = (out / "MODEL_CARD.md").read_text()
    manifest = json.loads((out / "MANIFEST.json").read_text())
    # the card names the units it counts, and states n as released outside the guarantee
    assert f"| training patients (n) | {led.dataset_size:,} |" in card and "| training reports |" not in card
    released = f"the number of training patients, n = {led.dataset_size:,}: DP-SGD treats n as public"
    assert "**Released outside the guarantee**" in card and f"- {released}" in card
    assert f"Released outside the guarantee: {released}" in manifest["guarantee"]
    assert manifest["released_outside_guarantee"][0].startswith(released)
    # a ledger of an earlier dprad quotes the validation split's size: the export's files do not
    splits = json.loads((old_run / "splits.json").read_text())
    val, test = len(splits["val"]), len(splits["test"])
    assert f"the {val} validation reports" in (old_run / "privacy.json").read_text()
    assert '"validation_reports": 20' in (old_run / "privacy.json").read_text()
    shared = export_run(old_run, tmp_path / "old", force_non_private=True)  # its noise is not secret
    for name, text in texts(shared).items():
        assert f"{val} validation" not in text and f"{test} test" not in text, name
        assert "validation_reports" not in text, name
    ledger = RunRecord.open(shared).ledger
    assert ledger.epsilon == RunRecord.open(old_run).ledger.epsilon  # every number of the guarantee kept
    assert "chosen on the validation reports under DP" in ledger.statement


def test_a_ledger_its_own_event_does_not_give_is_refused(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["head"]
    spent = RunRecord.open(run).ledger.epsilon
    assert spent is not None and spent > 1
    for name, value, refusal in (
        ("nan", float("nan"), "privacy.json: epsilon is nan, not a finite number"),
        ("small", 0.01, f"privacy.json: states epsilon 0.01, but its own accounting event gives {spent:.6g}"),
        ("inf-part", None, "privacy.json: parts[0].epsilon is inf, not a finite number"),
    ):
        ledger: dict[str, Any] = {"epsilon": value}
        if value is None:  # the total as written, one of its parts edited
            parts = json.loads((run / "privacy.json").read_text())["parts"]
            ledger = {"parts": [{**parts[0], "epsilon": float("inf")}, *parts[1:]]}
        bad = edited(run, tmp_path / name, **ledger)
        with pytest.raises(DpradError, match=re.escape(refusal)) as err:
            export_run(bad, tmp_path / f"ex-{name}", force_non_private=True)  # --force does not excuse it
        assert "\n" not in str(err.value)
        code, err_text = cli(["export", str(bad), "--out", str(tmp_path / f"ex-{name}")], capsys)
        assert code == 2 and err_text.count("\n") == 1 and refusal.split(": ", 1)[1] in err_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf-part", "nan", "small"]  # nothing written
    # the ledger as the run wrote it: exported, its epsilon recomputed, every JSON file strict JSON
    out = export_run(run, tmp_path / "ok")

    def no_constants(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    for name, text in texts(out).items():
        if name.endswith(".json"):
            json.loads(text, parse_constant=no_constants)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["epsilon_recomputed"] == pytest.approx(spent, rel=1e-9)


def test_a_federated_hospitals_site_directory_is_not_exported(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site's run directory holds the global model (trained on every hospital's patients) beside a ledger
    of its own patients only: an export of it would state one hospital's guarantee for all."""
    from dprad.federate.local import LocalTransport
    from dprad.federate.server import FederationConfig, run_federation
    from dprad.federate.site import SITE
    from federated import ROUNDS, prepare, write_sites

    data = write_sites(tmp_path / "data")
    sites = [prepare(data[s], tmp_path / s, name=s, model=tiny_bert) for s in ("site_a", "site_b")]
    run_federation(FederationConfig(rounds=ROUNDS, min_clients=2), LocalTransport(sites), tmp_path / "fed")
    site = sites[1]
    assert (site / SITE).is_file() and RunRecord.open(site).ledger.private  # a finished site: a run dir
    for force in (False, True):
        with pytest.raises(DpradError, match=r"site_b: a federated hospital's site directory") as err:
            export_run(site, tmp_path / "ex", force_non_private=force)
        assert "\n" not in str(err.value) and "global model" in str(err.value)
    code, err_text = cli(["export", str(site), "--out", str(tmp_path / "ex")], capsys)
    assert code == 2 and err_text.count("\n") == 1 and "federated hospital's site directory" in err_text
    assert not (tmp_path / "ex").exists()


def test_the_manifest_says_how_the_run_was_trained_and_its_thresholds_chosen(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    def reasons(out: Path) -> dict[str, str]:
        return {e["path"]: e["why"] for e in json.loads((out / "MANIFEST.json").read_text())["files"]}

    plain = RunRecord.open(runs["plain"])
    assert not plain.ledger.private and plain.thresholds.fitted_on == "val"
    why = reasons(export_run(runs["plain"], tmp_path / "plain", force_non_private=True))
    assert "WITHOUT differential privacy" in why["model/head.safetensors"]
    assert "privacy.json" in why and "WITHOUT differential privacy" in why["privacy.json"]
    assert "validation split of a run trained without DP" in why["thresholds.json"]
    assert not [name for name, text in why.items() if "DP-SGD" in text or "under DP" in text]
    private = RunRecord.open(runs["head"])
    default = private.config.privacy.threshold_default
    assert default != 0.5 and private.thresholds.fitted_on == "val (DP)"
    why = reasons(export_run(runs["head"], tmp_path / "head"))
    assert "trained with DP-SGD" in why["model/head.safetensors"]
    assert why["thresholds.json"].startswith(
        "the shipped per-label thresholds: chosen on the validation split"
    )
    assert f"keeps the default {default:g} (privacy.threshold_default)" in why["thresholds.json"]
    assert "0.5" not in why["thresholds.json"]


def test_noise_that_is_not_secret_is_refused_unless_forced_and_then_said_first(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert noise_source(RunRecord.open(runs["head"]).ledger) == NOISE_SECRET
    seeded = RunRecord.open(runs["seeded"])
    assert noise_source(seeded.ledger) == NOISE_STATED and seeded.config.privacy.noise_seed == NOISE_SEED
    warning = noise_warning(seeded.ledger)
    assert warning is not None
    with pytest.raises(DpradError, match=r"seeded: its DP noise is not secret") as err:
        export_run(runs["seeded"], tmp_path / "ex")
    assert "\n" not in str(err.value) and warning in str(err.value)
    assert str(err.value).endswith("--force to export anyway (its model card then says so under its title)")
    code, err_text = cli(["export", str(runs["seeded"]), "--out", str(tmp_path / "ex")], capsys)
    assert code == 2 and err_text.count("\n") == 1 and "--force to export anyway" in err_text
    assert not (tmp_path / "ex").exists()
    # forced: no file holds the seed, the ledger still says the noise came from one, the card says so first
    out = export_run(runs["seeded"], tmp_path / "ex", force_non_private=True)
    assert not [name for name, text in texts(out).items() if str(NOISE_SEED) in text]
    config = json.loads((out / "config.json").read_text())
    assert "noise_seed" in config["privacy"] and config["privacy"]["noise_seed"] is None
    assert noise_source(RunRecord.open(out).ledger) == NOISE_STATED
    card = (out / "MODEL_CARD.md").read_text().splitlines()
    assert card[0] == "# Model card: seeded" and warning in card[2]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert [f for f in manifest["forced"] if warning in f]
