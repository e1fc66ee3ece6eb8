"""``export_run``: the shareable part of a finished run, in a new folder, written all at once.

A run directory holds more than its privacy guarantee covers (split ids, un-noised losses, metrics and
statistics of private data). An export holds the model (weights as safetensors), the base encoder it
needs, the ledger, schema, config, shipped thresholds and a model card, each file listed in
``MANIFEST.json`` with its SHA-256 and why it is safe (:mod:`dprad.export.safe`); nothing else. It loads
wherever a run does (``RunRecord.open``, ``load_run``, ``dprad predict / serve / evaluate``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dprad.errors import DpradError
from dprad.export import safe
from dprad.io import write_json
from dprad.report.model_card import ExportScope, write_model_card
from dprad.run import RunRecord, files
from dprad.run.record import ManifestEntry

FORMAT = "dprad export 1"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    force_non_private: bool = False,
    include: Iterable[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write the export of the finished run ``run_dir`` to ``out`` and return ``out``.

    Refused (``DpradError``, one line): a non-private run, or thresholds fitted on validation without DP,
    unless ``force_non_private`` (the card then says so on its first line); an ``out`` that exists and is
    not empty, unless ``overwrite``. ``include=("evaluation",)`` adds the run's ``evaluation*.json``
    (computed on private data without DP: the card says so first). Written into a temporary folder beside
    ``out`` and renamed into place: ``out`` is either the whole export or untouched.
    """
    run_dir, out = Path(run_dir), Path(out)
    record = RunRecord.open(run_dir)
    if record.is_export:
        raise DpradError(f"{run_dir}: already an export (copy it to share it again)")
    forced = _refusals(record, force=force_non_private)
    include = tuple(dict.fromkeys(include))
    if bad := safe.unknown_includes(include):
        raise DpradError(f"--include {','.join(bad)}: not one of {', '.join(safe.INCLUDES)}")
    evaluations = sorted(run_dir.glob("evaluation*.json")) if "evaluation" in include else []
    if "evaluation" in include and not evaluations:
        raise DpradError(
            f"--include evaluation: {run_dir} has no evaluation.json "
            f"(dprad evaluate {run_dir} DATA --out {run_dir}/evaluation.json writes one)"
        )
    _check_out(run_dir, out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.export"  # beside out: one rename publishes it
    tmp.mkdir()
    try:
        written = _write_model(record, tmp)
        written |= _copy_encoder(Path(record.model_dir), tmp / safe.ENCODER_DIR)
        written |= _write_description(record, tmp)
        for ev in evaluations:
            shutil.copyfile(ev, tmp / ev.name)
            written[ev.name] = safe.evaluation_why(ev.name) or safe.NOT_ON_LIST
        write_model_card(run_dir, tmp / files.MODEL_CARD, export=ExportScope(evaluation=bool(evaluations)))
        written[files.MODEL_CARD] = safe.COMMON[files.MODEL_CARD]
        _write_manifest(record, tmp, written, forced=forced, include=include)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _refusals(record: RunRecord, *, force: bool) -> list[str]:
    """What in this run the guarantee does not cover: refused unless forced; returned when forced."""
    forced = []
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
    _save_tensors(head, tmp / "model" / "head.safetensors")
    center = files.read_weights(src, files.CENTER_WEIGHTS)
    if center is not None:
        _save_tensors(center, tmp / "model" / "center.safetensors")
    if mode == "lora":  # peft's save_pretrained output: adapter_model.safetensors + adapter_config.json
        adapter, to = src / "adapter", tmp / "model" / "adapter"
        shutil.copyfile(adapter / "adapter_config.json", _parent(to / "adapter_config.json"))
        _as_safetensors(
            adapter / "adapter_model.safetensors",
            adapter / "adapter_model.bin",
            to / "adapter_model.safetensors",
        )
    elif mode == "full":  # transformers' save_pretrained output: config.json + model.safetensors
        encoder, to = src / "encoder", tmp / "model" / "encoder"
        shutil.copyfile(encoder / "config.json", _parent(to / "config.json"))
        _as_safetensors(
            encoder / "model.safetensors", encoder / "pytorch_model.bin", to / "model.safetensors"
        )
    return safe.safe_files(mode, lp_ft=center is not None)


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


def _write_description(record: RunRecord, tmp: Path) -> dict[str, str]:
    """privacy.json and schema.json as written, config.json pointing at the bundled encoder, thresholds."""
    shutil.copyfile(record.path / files.PRIVACY, tmp / files.PRIVACY)  # byte for byte
    shutil.copyfile(record.path / files.SCHEMA, tmp / files.SCHEMA)
    write_json(
        tmp / files.CONFIG,
        {**record.config.to_dict(), "derived": {**record.derived, "model_dir": files.ENCODER}},
    )
    shipped = record.thresholds
    write_json(
        tmp / files.THRESHOLDS,
        {
            "labels": list(record.schema.labels),
            "values": list(shipped.values),
            "fitted_on": shipped.fitted_on,
            "rule": shipped.rule,
            "epsilon": shipped.epsilon,
        },
    )
    return {name: safe.COMMON[name] for name in (files.PRIVACY, files.SCHEMA, files.CONFIG, files.THRESHOLDS)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(
    record: RunRecord, tmp: Path, written: dict[str, str], *, forced: list[str], include: tuple[str, ...]
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
    write_json(
        tmp / files.MANIFEST,
        {
            "format": FORMAT,
            "run": record.name,
            "mode": record.display_mode,
            "private": led.private,
            "epsilon": led.epsilon,
            "delta": led.delta,
            "privacy_unit": led.privacy_unit,
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
