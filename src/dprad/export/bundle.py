"""``export_run``: the shareable part of a finished run, in a new folder, written all at once.

A run directory holds more than its privacy guarantee covers (split ids, un-noised losses, metrics and
statistics of private data). An export holds the model (weights as safetensors), the base encoder it
needs, the ledger, schema, config, shipped thresholds and a model card, each file listed in
``MANIFEST.json`` with its SHA-256 and why it is safe (:mod:`dprad.export.safe`); nothing else. It loads
wherever a run does (``RunRecord.open``, ``load_run``, ``dprad predict / serve / evaluate``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dprad.errors import DpradError
from dprad.export import safe
from dprad.export.verify import recomputed_epsilon
from dprad.io import write_text
from dprad.privacy.ledger import noise_warning
from dprad.report.model_card import ExportScope, write_model_card
from dprad.report.public import (
    METRICS_INCLUDED,
    data_name,
    guarantee_text,
    local_paths,
    model_name,
    public_ledger,
    released_outside,
    scrub_json,
    short_name,
)
from dprad.run import RunRecord, files
from dprad.run.record import ManifestEntry

FORMAT = "dprad export 1"
# what marks a federated hospital's site directory (dprad.federate.site.SITE, a layer above this one)
FEDERATION_SITE = "site.json"
TEXT_SUFFIXES = (".json", ".md", ".txt")  # the files searched for local paths before an export is published


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    force_non_private: bool = False,
    include: Iterable[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write the export of the finished run ``run_dir`` to ``out`` and return ``out``.

    Refused (``DpradError``, one line): a federated hospital's site directory (its model is the global one,
    its ledger only this hospital's); a ledger whose epsilon its own accounting event does not give, or
    with a number that is not finite; unless ``force_non_private``, a non-private run, thresholds fitted on
    validation without DP, or DP noise that is not secret (the card then says so first); an ``out`` that
    exists and is not empty, unless ``overwrite``. ``include=("evaluation",)`` adds the run's ``evaluation*.json``
    (computed on private data without DP: the card says so first). Written into a temporary folder beside
    ``out`` and renamed into place: ``out`` is either the whole export or untouched.
    """
    run_dir, out = Path(run_dir), Path(out)
    _refuse_site(run_dir)
    record = RunRecord.open(run_dir)
    if record.is_export:
        raise DpradError(f"{run_dir}: already an export (copy it to share it again)")
    epsilon = recomputed_epsilon(record.ledger, source=str(run_dir / files.PRIVACY))
    forced = _refusals(record, force=force_non_private)
    include = tuple(dict.fromkeys(include))
    if bad := safe.unknown_includes(include):
        raise DpradError(f"--include {','.join(bad)}: not one of {', '.join(safe.INCLUDES)}")
    evaluations = sorted(run_dir.glob(files.EVALUATIONS)) if "evaluation" in include else []
    if "evaluation" in include and not evaluations:
        raise DpradError(
            f"--include evaluation: {run_dir} has no {files.EVALUATION} "
            f"(dprad evaluate {run_dir} DATA --out {run_dir / files.EVALUATION} writes one)"
        )
    _check_out(run_dir, out, overwrite=overwrite)
    data_sha256 = _data_sha256(record)
    paths = local_paths(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.export"  # beside out: one rename publishes it
    tmp.mkdir()
    try:
        written = _write_model(record, tmp)
        written |= _copy_encoder(Path(record.model_dir), tmp / safe.ENCODER_DIR)
        written |= _write_description(record, tmp, data_sha256=data_sha256)
        _name_local_paths(tmp, written, paths)  # a copied file that names a local path names it by its name
        for ev in evaluations:  # as the run wrote them, local paths named
            _write_json(tmp / ev.name, scrub_json(files.read_object(ev), paths))
            written[ev.name] = safe.evaluation_why(ev.name) or safe.NOT_ON_LIST
        scope = ExportScope(evaluation=bool(evaluations), data_sha256=data_sha256)
        write_model_card(run_dir, tmp / files.MODEL_CARD, export=scope)
        written[files.MODEL_CARD] = safe.COMMON[files.MODEL_CARD]
        about = {"epsilon_recomputed": epsilon, "data_sha256": data_sha256}
        _write_manifest(record, tmp, written, forced=forced, include=include, about=about)
        _check_no_local_path(tmp, paths)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _refuse_site(run_dir: Path) -> None:
    """A federated hospital's site directory holds the global model, trained on every hospital's patients,
    beside a ledger that states only this hospital's guarantee: an export of it would claim less than the
    model holds, and the other hospitals' ledgers are not here to state theirs."""
    if (run_dir / FEDERATION_SITE).is_file():
        raise DpradError(
            f"{run_dir}: a federated hospital's site directory: its model is the federation's global model, "
            "trained on every hospital's patients, but its privacy.json states only this hospital's guarantee "
            "and the others' ledgers are not here; an export would understate what the model was trained on, "
            "so it is refused (the federation's model card, dprad model-card FEDERATION_DIR, states each "
            "hospital's guarantee)"
        )


def _refusals(record: RunRecord, *, force: bool) -> list[str]:
    """What in this run the guarantee does not cover: refused unless forced; returned when forced."""
    forced = []
    warning = noise_warning(record.ledger)
    if warning:
        forced.append(f"DP noise not secret: {warning}")
        if not force:
            raise DpradError(
                f"{record.path}: its DP noise is not secret, so its guarantee does not hold against whoever "
                f"can regenerate it: {warning} --force to export anyway (its model card then says so under "
                "its title)"
            )
    if not record.ledger.private:
        forced.append("not private: the model was trained without differential privacy")
        if not force:
            raise DpradError(
                f"{record.path}: not private (trained without DP): an export would share a model with no "
                "privacy guarantee; --force exports it anyway, and its model card says so first"
            )
    if not record.thresholds.covered:
        forced.append("thresholds fitted on the private validation split without DP")
        if not force:
            raise DpradError(
                f"{record.path}: its thresholds were fitted on the validation split without DP ({record.thresholds.fitted_on}), "
                "from private data outside the guarantee; retrain with --thresholds dp or 0.5, or --force "
                "exports them, and the model card says so first"
            )
    return forced


def _check_out(run_dir: Path, out: Path, *, overwrite: bool) -> None:
    run, target = run_dir.resolve(), out.resolve()
    if target == run or target.is_relative_to(run) or run.is_relative_to(target):
        raise DpradError(f"--out {out}: choose a folder outside the run {run_dir} (the run stays private)")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise DpradError(f"--out {out}: exists and is not empty (--overwrite replaces it)")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export onto ``out`` (an old one, with --overwrite, is removed after)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


# ---------------------------------------------------------------------------------------------- the model


def _save_tensors(tensors: dict[str, Any], target: Path) -> None:
    from safetensors.torch import save_file

    _parent(target)
    # contiguous copies: safetensors refuses views and tensors that share memory
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(target), {"format": "pt"}
    )


def _as_safetensors(src: Path, pickle: Path, target: Path) -> None:
    """``src`` (safetensors) copied to ``target``, or, when only ``pickle`` (a torch file) is there, converted."""
    if src.is_file():
        shutil.copyfile(src, _parent(target))
    elif pickle.is_file():
        import torch

        _save_tensors(torch.load(pickle, map_location="cpu", weights_only=True), target)
    else:
        raise DpradError(f"{src.parent}: no {src.name} (or {pickle.name}) to export")


def _write_model(record: RunRecord, tmp: Path) -> dict[str, str]:
    """The trained weights, as safetensors: model/head (+ model/center for LP-FT) and the mode's own."""
    src, mode = record.model_path, record.mode
    head = files.read_weights(src, files.HEAD_WEIGHTS)
    if head is None:
        raise DpradError(f"{record.path}: no model/head.pt: not a finished run")
    _save_tensors(head, tmp / files.MODEL / f"{files.HEAD_WEIGHTS}.safetensors")
    center = files.read_weights(src, files.CENTER_WEIGHTS)
    if center is not None:
        _save_tensors(center, tmp / files.MODEL / f"{files.CENTER_WEIGHTS}.safetensors")
    if mode == "lora":  # peft's save_pretrained output: adapter_model.safetensors + adapter_config.json
        adapter, to = src / "adapter", tmp / files.MODEL / "adapter"
        _copy_model_config(adapter / "adapter_config.json", _parent(to / "adapter_config.json"), record)
        _as_safetensors(
            adapter / "adapter_model.safetensors",
            adapter / "adapter_model.bin",
            to / "adapter_model.safetensors",
        )
    elif mode == "full":  # transformers' save_pretrained output: config.json + model.safetensors
        encoder, to = src / "encoder", tmp / files.MODEL / "encoder"
        _copy_model_config(encoder / "config.json", _parent(to / "config.json"), record)
        _as_safetensors(
            encoder / "model.safetensors", encoder / "pytorch_model.bin", to / "model.safetensors"
        )
    return safe.safe_files(mode, lp_ft=center is not None, private=record.ledger.private)


# the fields of peft's and transformers' saved configs that name the directory a model was loaded from
NAME_OR_PATH = ("base_model_name_or_path", "_name_or_path")


def _copy_model_config(src: Path, dst: Path, record: RunRecord) -> None:
    """A saved model's config, with the directory its base model was loaded from (an absolute path of the
    machine that trained it, which need not be the one the run records now) replaced by the model's name."""
    raw = files.read_object(src)
    for key in NAME_OR_PATH:
        value = raw.get(key)
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "."))):
            raw[key] = model_name(record)
    _write_json(dst, raw)


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _copy_encoder(src: Path, dst: Path) -> dict[str, str]:
    """The base encoder's files on the safe list (config, weights as safetensors, tokenizer, licence)."""
    written: dict[str, str] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        name = path.relative_to(src).as_posix()
        why = safe.encoder_why(name)
        if why is not None:
            shutil.copyfile(path, _parent(dst / name))
            written[f"{safe.ENCODER_DIR}/{name}"] = why
    has_weights = any(n.endswith(".safetensors") for n in written)
    if not has_weights:  # an older checkpoint: its torch pickle converted
        _as_safetensors(src / "model.safetensors", src / "pytorch_model.bin", dst / "model.safetensors")
        written[f"{safe.ENCODER_DIR}/model.safetensors"] = safe.ENCODER_FILES["model.safetensors"]
    if f"{safe.ENCODER_DIR}/config.json" not in written:
        raise DpradError(f"{src}: the base encoder has no config.json")
    return written


# ---------------------------------------------------------------------------------------- what it says


def _write_json(path: Path, obj: Any) -> None:
    """Strict JSON (no NaN or Infinity, which JSON does not have), written atomically."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise DpradError(
            f"{path.name}: the run's files hold a number that is not finite (NaN or infinity): not exported"
        ) from None
    write_text(path, text + "\n")


def _data_sha256(record: RunRecord) -> str | None:
    """The SHA-256 of the run's training file as found now, or None (passed in memory, a folder such as a
    MIMIC-CXR tree, or no longer where the run read it)."""
    path = Path(record.data_path) if record.data_path else None
    return _sha256(path) if path is not None and path.is_file() else None


def _public_config(record: RunRecord, *, data_sha256: str | None) -> dict[str, Any]:
    """config.json as an export holds it: the run's settings with every local path named, no feature cache
    and no noise seed (a stated ``privacy.noise_seed`` regenerates the noise); the training data by name
    and content hash."""
    cfg = record.config.to_dict()
    data, model, train, privacy = cfg["data"], cfg["model"], cfg["train"], cfg["privacy"]
    data["path"] = data_name(record) if data.get("path") else data.get("path")
    for key in ("labels_path", "schema"):
        if data.get(key):
            data[key] = short_name(str(data[key]))
    model["name"] = model_name(record)
    train["feature_cache"] = None  # a local cache of features of the private reports
    privacy["noise_seed"] = None
    derived = {**record.derived, "model_dir": files.ENCODER, "data_sha256": data_sha256}
    return scrub_json({**cfg, "derived": derived}, local_paths(record))


def _write_description(record: RunRecord, tmp: Path, *, data_sha256: str | None) -> dict[str, str]:
    """privacy.json (the ledger, its texts named), schema.json as written, config.json (public settings,
    pointing at the bundled encoder), the shipped thresholds; and why each may be shared."""
    _write_json(tmp / files.PRIVACY, public_ledger(record).to_dict())
    shutil.copyfile(record.path / files.SCHEMA, tmp / files.SCHEMA)
    _write_json(tmp / files.CONFIG, _public_config(record, data_sha256=data_sha256))
    shipped = record.thresholds
    _write_json(tmp / files.THRESHOLDS, shipped.to_export(record.schema.labels))
    why = safe.safe_files(record.mode, lp_ft=False, private=record.ledger.private)
    out = {name: why[name] for name in (files.PRIVACY, files.SCHEMA, files.CONFIG)}
    out[files.THRESHOLDS] = safe.thresholds_why(
        shipped.fitted_on,
        shipped.rule,
        epsilon=shipped.epsilon,
        default=record.config.privacy.threshold_default,
    )
    return out


def _name_local_paths(tmp: Path, written: dict[str, str], paths: dict[str, str]) -> None:
    """The text files written so far, copied ones included (peft's adapter_config.json names the base
    model's directory), with each local path replaced by its name."""
    for name in written:
        target = tmp / name
        if target.suffix in TEXT_SUFFIXES and target.is_file():  # written so far (the card comes later)
            text = target.read_text(encoding="utf-8", errors="surrogateescape")
            named = text
            for path, short in paths.items():
                named = named.replace(path, short)
            if named != text:
                target.write_text(named, encoding="utf-8", errors="surrogateescape")


def _check_no_local_path(tmp: Path, paths: dict[str, str]) -> None:
    """The last check before publishing: no text file of the export names a local path the run records."""
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.suffix in TEXT_SUFFIXES:
            text = p.read_text(encoding="utf-8", errors="replace")
            found = [path for path in paths if path in text]
            if found:  # a bug, never a user error: no local path may leave
                raise RuntimeError(f"export: {p.relative_to(tmp)} names the local path {found[0]}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(
    record: RunRecord,
    tmp: Path,
    written: dict[str, str],
    *,
    forced: list[str],
    include: tuple[str, ...],
    about: dict[str, Any],
) -> None:
    """MANIFEST.json; first a check that the folder holds exactly the files on the safe list."""
    present = {p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()}
    if present != set(written):  # a bug, never a user error: nothing unlisted may leave
        raise RuntimeError(f"export: files not on the safe list {sorted(present ^ set(written))}")
    entries = [
        ManifestEntry(name, _sha256(tmp / name), (tmp / name).stat().st_size, written[name]).to_dict()
        for name in sorted(written)
    ]
    led = record.ledger
    metrics = METRICS_INCLUDED if "evaluation" in include else None
    _write_json(
        tmp / files.MANIFEST,
        {
            "format": FORMAT,
            "run": record.name,
            "mode": record.display_mode,
            "private": led.private,
            "epsilon": led.epsilon,
            "epsilon_recomputed": about["epsilon_recomputed"],  # from privacy.json's own accounting event
            "delta": led.delta,
            "privacy_unit": led.privacy_unit,
            "guarantee": guarantee_text(record, metrics=metrics),
            "released_outside_guarantee": released_outside(record, metrics=metrics),
            "data": {"file": data_name(record), "sha256": about["data_sha256"]},
            "forced": forced,
            "included": list(include),
            "files": entries,
            "manifest": safe.MANIFEST_WHY,
            "left_out": _left_out(record, set(written)),
        },
    )


def _left_out(record: RunRecord, written: set[str]) -> list[dict[str, str]]:
    """What the run holds that the export does not (its top level and model/), and why."""
    names = sorted(
        p.relative_to(record.path).as_posix()
        for p in (*record.path.iterdir(), *record.model_path.rglob("*"))
        if p.is_file() or p.parent == record.path
    )
    return [{"file": n, "why": safe.left_out_why(n)} for n in names if n not in written and n != files.MODEL]
