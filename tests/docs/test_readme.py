"""The README is a landing page: at most 200 lines, every ``dprad ...`` command in it names a real command
(and flags that command has), every local link it makes points at a file, and the two set-up commands
that CI and new users copy are there as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import typer

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PLACEHOLDERS = {"COMMAND"}  # "dprad COMMAND --help"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def dprad_commands(text: str) -> list[str]:
    """Every ``dprad ...`` invocation: each line of a fenced block and each inline code span that starts
    with it, split at ``&&``, ``;`` and ``|`` and cut at a comment; a table cell's ``a / b`` is two."""
    found: list[str] = []
    pieces: list[str] = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
        pieces += [line.split(" #")[0] for line in block.splitlines()]
    pieces += re.findall(r"`(dprad [^`]+)`", text)
    for piece in pieces:
        for part in re.split(r"&&|;|\|\||\s\|\s|\s/\s", piece):
            part = part.strip().rstrip("&").strip()
            if part.startswith("dprad ") or part == "dprad":
                found.append(part)
    return found


def check_command(line: str, root: click.Command) -> list[str]:
    """What is wrong with one ``dprad ...`` line: an unknown command or subcommand, or a flag it lacks."""
    words = shlex.split(line)[1:]
    cmd, name = root, "dprad"
    while isinstance(cmd, click.Group):
        if not words:  # a group named on its own ("dprad federate") is real; "dprad" alone is not a command
            return [] if cmd is not root else [f"{line}: no command"]
        if words[0] in PLACEHOLDERS:
            return []
        sub = cmd.commands.get(words[0])
        if sub is None:
            return [f"{line}: '{name} {words[0]}' is not a command"]
        cmd, name, words = sub, f"{name} {words[0]}", words[1:]
    flags = {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    flags.add("--help")
    typed = [w.split("=")[0] for w in words if w.startswith("-") and not re.fullmatch(r"-?\d[\d.]*", w)]
    return [f"{line}: '{name}' has no flag {f}" for f in typed if f not in flags]


def test_readme_is_a_landing_page_of_at_most_200_lines() -> None:
    lines = readme().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_dprad_command_in_the_readme_is_real() -> None:
    from dprad.cli import app

    root = typer.main.get_command(app)
    commands = dprad_commands(readme())
    assert len(commands) >= 15, commands  # the demo, the six-step path, the command table
    problems = [p for line in commands for p in check_command(line, root)]
    assert not problems, "\n".join(problems)


def test_the_readme_check_catches_a_wrong_command() -> None:
    from dprad.cli import app

    root = typer.main.get_command(app)
    assert check_command("dprad trian data.csv", root) == [
        "dprad trian data.csv: 'dprad trian' is not a command"
    ]
    assert check_command("dprad data inspekt x.csv", root)[0].endswith(
        "'dprad data inspekt' is not a command"
    )
    assert check_command("dprad train x.csv --epsilonn 1", root) == [
        "dprad train x.csv --epsilonn 1: 'dprad train' has no flag --epsilonn"
    ]
    assert check_command("dprad train x.csv --epsilon 1 --out r -o r", root) == []


def test_the_set_up_commands_are_there_as_written() -> None:
    """.ci/run runs the README's test command; both set-up commands stay exactly as users copy them."""
    text = readme()
    demo = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && dprad demo"
    tests = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e '.[test]' "
        "&& python -m pytest"
    )
    assert f"```bash\n{demo}\n```" in text
    assert f"```bash\n{tests}\n```" in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q torch==2.13.0 -e '.[test]'" in ci and "\npython -m pytest\n" in ci


def test_every_local_link_in_the_readme_points_at_a_file() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", readme())
    local = [u for u in links if not re.match(r"[a-z]+:", u)]
    assert len(local) >= 10, local
    missing = [u for u in local if not (ROOT / u.split("#")[0]).exists()]
    assert not missing, missing
