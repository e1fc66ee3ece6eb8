from __future__ import annotations

from pathlib import Path

import pytest

from dprad import CHEXPERT14, CTRATE18, DpradError, load_schema


def test_builtin_schemas_have_the_published_names() -> None:
    assert len(CHEXPERT14) == 14 and len(CTRATE18) == 18
    assert CHEXPERT14.labels[0] == "No Finding" and CHEXPERT14.no_finding == "No Finding"
    assert "Interlobular septal thickening" in CTRATE18.labels
    assert load_schema("ctrate18") is CTRATE18


def test_user_schema_from_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "mine.yaml"
    y.write_text("name: mine\nlabels: [Nodule, Mass]\ncritical: [Mass]\nterms: {Nodule: [nodule, nodular]}\n")
    s = load_schema(str(y))
    assert (s.name, s.labels, s.critical, s.terms["Nodule"]) == (
        "mine",
        ("Nodule", "Mass"),
        ("Mass",),
        ("nodule", "nodular"),
    )
    j = tmp_path / "list.json"
    j.write_text('["A", "B"]')
    assert load_schema(str(j)).labels == ("A", "B")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("labels: [A, A]\n", "lists a label twice"),
        ("labels: [A]\ncritical: [B]\n", "'B' is not one of its labels"),
        ("nolabels: 1\n", "missing key 'labels'"),
        ("labels: [A\n", "not valid yaml"),
    ],
)
def test_bad_user_schema(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(DpradError, match=match):
        load_schema(str(p))


def test_unknown_schema_name() -> None:
    with pytest.raises(DpradError, match="neither a built-in schema"):
        load_schema("chexpert15")
