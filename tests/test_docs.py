"""The README documents every command, option and YAML key, and its command lines parse.

In the spirit of simonw/sqlite-utils tests/test_docs.py: a new option or key fails here until the
README mentions it.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

import params
import search_space
import sweep

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_FENCES = {"sh", "shell", "bash", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTION = re.compile(r"^(\d*|&)(>>?|<)")  # >, >>, <, 2>, 2>&1, &>, >file, ...


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def subcommands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: command for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, command in action.choices.items()}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    commands = subcommands_of(sweep._parser())
    assert commands, "sweep's parser has no subcommands"
    return commands


def long_options() -> list[tuple[str, str]]:
    return [(name, option) for name, command in subcommands().items()
            for action in command._actions for option in action.option_strings
            if option.startswith("--")]


def mentions(text: str, word: str) -> bool:
    """`word` appears on its own, not as part of a longer option or name."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", list(subcommands()))
def test_subcommand_is_documented(readme: str, name: str) -> None:
    assert mentions(readme, f"sweep {name}"), f"README.md does not show `sweep {name}`"


@pytest.mark.parametrize(("command", "option"), long_options())
def test_option_is_documented(readme: str, command: str, option: str) -> None:
    assert mentions(readme, option), f"README.md does not mention {option} (sweep {command})"


def parser_options() -> dict[str, set[str]]:
    """Every option string -> the commands whose parser takes it."""
    taken: dict[str, set[str]] = {}
    for name, command in subcommands().items():
        for action in command._actions:
            for option in action.option_strings:
                taken.setdefault(option, set()).add(name)
    return taken


def options_table(text: str) -> dict[str, set[str]]:
    """Every option in the README's options table -> the commands its rows name ("all": every one)."""
    match = re.search(r"^### Options\n(.*?)(?=^##)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '### Options' table"
    table: dict[str, set[str]] = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`-"):
            continue
        commands = set(subcommands()) if cells[1] == "all" else {c.strip() for c in cells[1].split(",")}
        for option in re.findall(r"`(-{1,2}[\w-]+)", cells[0]):
            table.setdefault(option, set()).update(commands)
    return table


def test_the_options_table_names_exactly_the_commands_of_each_option(readme: str) -> None:
    table, parsers = options_table(readme), parser_options()
    assert len(table) >= 20
    wrong = {option: {"README": sorted(table.get(option, ())), "parsers": sorted(commands)}
             for option, commands in parsers.items() if table.get(option) != commands}
    wrong.update({option: {"README": sorted(commands), "parsers": []}
                  for option, commands in table.items() if option not in parsers})
    assert wrong == {}


# ---------------------------------------------------------------- the YAML key tables

def key_table_rows(text: str) -> dict[str, list[str]]:
    """First-column `code` -> the other cells, for every table row under `## search_space.yaml`."""
    match = re.search(r"^## search_space\.yaml\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## search_space.yaml' section"
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", match.group(1), re.MULTILINE)
    return {name: [cell.strip() for cell in rest.split("|")] for name, rest in rows}


def key_table_names(text: str) -> set[str]:
    return set(key_table_rows(text))


def test_key_tables_are_found(readme: str) -> None:
    assert len(key_table_names(readme)) >= 20


@pytest.mark.parametrize("key", search_space.TOP_KEYS)
def test_top_level_key_is_in_the_table(readme: str, key: str) -> None:
    assert key in key_table_names(readme), f"the README's key table has no row for `{key}`"


@pytest.mark.parametrize("key", search_space.DATA_KEYS)
def test_data_key_is_in_the_table(readme: str, key: str) -> None:
    assert f"data.{key}" in key_table_names(readme), f"the README's key table has no row for `data.{key}`"


@pytest.mark.parametrize("key", sorted({k for keys in params.PARAM_KEYS.values() for k in keys}))
def test_param_key_is_in_the_table(readme: str, key: str) -> None:
    assert key in key_table_names(readme), f"the README's param spec table has no row for `{key}`"


@pytest.mark.parametrize("key", sorted(search_space.DEFAULTS))
def test_default_is_in_the_table(readme: str, key: str) -> None:
    """The default column says what DEFAULTS says; None is `null` or a derived name."""
    default = search_space.DEFAULTS[key]
    cell = key_table_rows(readme)[key][1]
    if default is None:
        assert cell == "`null`" or cell.startswith(("`<", "the ")), (key, cell)
    else:
        shown = yaml.safe_dump(default, default_flow_style=True, sort_keys=False).removesuffix("...\n").strip() \
            if isinstance(default, (dict, bool)) else default  # a mapping or a boolean as the file writes it
        assert cell == f"`{shown}`", (key, cell)


# ---------------------------------------------------------------- the command lines

def shell_lines(text: str) -> list[str]:
    """The lines of the fenced shell code blocks, with backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^```(\w+)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        fence, body = block
        if fence in SHELL_FENCES:
            lines += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def sweep_commands(line: str) -> list[list[str]]:
    """The argv of each `sweep ...` or `python sweep.py ...` command on a line, without
    environment assignments in front and redirections or pipes behind."""
    commands, current = [], []
    for token in shlex.split(line, comments=True) + [";"]:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for words in commands:
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        cut = next((i for i, word in enumerate(words) if REDIRECTION.match(word)), len(words))
        words = words[:cut]
        if words[:1] == ["sweep"]:
            found.append(words[1:])
        elif len(words) > 1 and words[0].startswith("python") and words[1].endswith("sweep.py"):
            found.append(words[2:])
    return found


def documented_commands() -> list[list[str]]:
    return [argv for line in shell_lines(README.read_text()) for argv in sweep_commands(line)]


def test_the_readme_has_command_lines() -> None:
    assert len(documented_commands()) >= 5


def test_sweep_commands_are_extracted() -> None:
    assert sweep_commands("SWEEP_STORAGE=x.journal sweep best --format yaml > best.yaml  # note") == [
        ["best", "--format", "yaml"]]
    assert sweep_commands("sweep run -q 2>/dev/null && sweep best | head") == [["run", "-q"], ["best"]]
    assert sweep_commands("python sweep.py validate --config a.yaml") == [["validate", "--config", "a.yaml"]]
    assert sweep_commands("mlflow ui --backend-store-uri sqlite:///mlflow.db") == []


def strict_parser() -> argparse.ArgumentParser:
    """sweep's parser, refusing abbreviated options, so `--n-trial` in the README is a typo."""
    parser = sweep._parser()
    for each in [parser, *subcommands_of(parser).values()]:
        each.allow_abbrev = False
    return parser


def parses(argv: list[str]) -> bool:
    try:
        strict_parser().parse_args(argv)
    except SystemExit:  # argparse's way to refuse
        return False
    return True


def test_a_wrong_command_line_does_not_parse() -> None:
    assert parses(["run", "--n-trials", "5"])
    assert not parses(["run", "--n-trial", "5"])
    assert not parses(["validate", "--storage", "x.journal"])
    assert not parses(["export"])


@pytest.mark.parametrize("argv", documented_commands(), ids=shlex.join)
def test_command_line_parses(argv: list[str]) -> None:
    assert parses(argv), f"`sweep {shlex.join(argv)}` in README.md does not parse"
