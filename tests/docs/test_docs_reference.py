"""The generated reference lists every command and flag the command line has, every config key and every
file a run or an export holds: a flag added to the code and missing from the reference fails here.

The command line is walked on its own (click's tree, built by typer from ``dprad.cli.app``), not through the
generator, and each flag must appear in its own command's section of the page."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """docs/gen_reference.py, the mkdocs hook (it is not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location(
        "dprad_docs_gen_reference", ROOT / "docs" / "gen_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cli_commands() -> dict[str, click.Command]:
    """Every leaf command of ``dprad`` by its full name, hidden ones included."""
    from dprad.cli import app

    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, name: str) -> None:
        if isinstance(cmd, click.Group):
            for sub_name, sub in cmd.commands.items():
                walk(sub, f"{name} {sub_name}")
        else:
            out[name] = cmd

    walk(typer.main.get_command(app), "dprad")
    return out


def sections(markdown: str) -> dict[str, str]:
    """A page's second-level sections by heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def unlisted(page: dict[str, str], commands: dict[str, click.Command]) -> list[str]:
    """Each command, flag or argument of ``commands`` that its section of the page does not name."""
    missing = [name for name in commands if name not in page]
    for name, cmd in commands.items():
        section = page.get(name, "")
        for param in cmd.params:
            if isinstance(param, click.Option):
                typed = [*param.opts, *param.secondary_opts]
            else:
                typed = [(param.name or "").upper()]
            missing += [f"{name} {t}" for t in typed if f"`{t}`" not in section]
        if cmd.help and " ".join(cmd.help.split())[:40] not in section:
            missing.append(f"{name}: its help text")
    return missing


def test_every_command_and_flag_is_in_the_reference(gen: ModuleType) -> None:
    page = sections(gen.commands_page())
    commands = cli_commands()
    assert len(commands) >= 20 and {"dprad train", "dprad data inspect", "dprad federate client"} <= set(
        commands
    )
    assert set(page) == set(commands), set(commands) ^ set(page)
    missing = unlisted(page, commands)
    assert not missing, "the reference does not list: " + ", ".join(missing)


def test_a_flag_the_reference_lacks_fails_the_check(gen: ModuleType) -> None:
    """The check has teeth: a command with a flag the page does not list is caught, by name."""
    page = sections(gen.commands_page())
    cmd = cli_commands()["dprad predict"]
    grown = click.Command(
        cmd.name, params=[*cmd.params, click.Option(["--not-listed", "-Z"])], help=cmd.help, callback=None
    )
    assert unlisted(page, {"dprad predict": grown}) == ["dprad predict --not-listed", "dprad predict -Z"]
    assert unlisted(page, {"dprad predict2": cmd})[0] == "dprad predict2"


def test_every_config_key_is_in_the_reference(gen: ModuleType) -> None:
    from dprad.commands.options import SECTIONS

    page = sections(gen.config_page())
    assert set(page) == {f"`{s}`" for s in SECTIONS}
    missing = [
        f"{sec}.{f.name}"
        for sec, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if not re.search(rf"^\| `{f.name}` \|", page[f"`{sec}`"], re.M)
    ]
    assert not missing, missing


def test_every_run_and_export_file_is_in_the_reference(gen: ModuleType) -> None:
    from dprad.export import safe
    from dprad.run import files

    page = gen.run_directory_page()
    run_files = [
        files.CONFIG,
        *files.RUN_FILES,
        files.EVALUATION,
        files.MODEL,
        files.MANIFEST,
        files.THRESHOLDS,
    ]
    listed = [
        *run_files,
        *safe.COMMON,
        *safe.CENTER,
        *(name for rows in safe.MODE_FILES.values() for name in rows),
        *safe.ENCODER_FILES,
        *safe.EVALUATION,
        *safe.LEFT_OUT,
    ]
    shown = {files.MODEL: f"{files.MODEL}/"}  # a folder is listed with its slash
    missing = [n for n in listed if f"`{shown.get(n, n)}`" not in page and f"<code>{n}</code>" not in page]
    assert not missing, missing


def test_the_generated_pages_are_not_committed(gen: ModuleType) -> None:
    """They are written at build time only: a stale copy in docs/ would shadow them."""
    for uri in gen.pages():
        assert not (ROOT / "docs" / uri).exists(), f"docs/{uri} is generated at build time; remove the file"
