"""The docs document every command, option and YAML key, their command lines parse, and their links resolve.

In the spirit of simonw/sqlite-utils tests/test_docs.py: a new option or key fails here until the
docs mention it. The docs are README.md, the front page, and the pages under docs/: a command or
option may be shown on any of them; the options table is on the front page, the YAML key tables
on docs/search-space.md. The front page stays short and links every page of docs/.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
import yaml

from gbsweep import cli, params, search_space

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SEARCH_SPACE_PAGE = DOCS / "search-space.md"
FRONT_PAGE_MAX_LINES = 300
SHELL_FENCES = {"sh", "shell", "bash", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTION = re.compile(r"^(\d*|&)(>>?|<)")  # >, >>, <, 2>, 2>&1, &>, >file, ...


def docs_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def pages() -> list[Path]:
    """The front page, then every page under docs/."""
    return [README, *docs_pages()]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def docs() -> str:
    """README.md and every docs/*.md page, as one text."""
    return "\n\n".join(page.read_text() for page in pages())


@pytest.fixture(scope="module")
def search_space_page() -> str:
    return SEARCH_SPACE_PAGE.read_text()


def subcommands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: command for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, command in action.choices.items()}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    commands = subcommands_of(cli._parser())
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
def test_subcommand_is_documented(docs: str, name: str) -> None:
    assert mentions(docs, f"sweep {name}"), f"neither README.md nor docs/*.md shows `sweep {name}`"


@pytest.mark.parametrize(("command", "option"), long_options())
def test_option_is_documented(docs: str, command: str, option: str) -> None:
    assert mentions(docs, option), f"neither README.md nor docs/*.md mentions {option} (sweep {command})"


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
    assert match, "docs/search-space.md has no '## search_space.yaml' section"
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", match.group(1), re.MULTILINE)
    return {name: [cell.strip() for cell in rest.split("|")] for name, rest in rows}


def key_table_names(text: str) -> set[str]:
    return set(key_table_rows(text))


def test_key_tables_are_found(search_space_page: str) -> None:
    assert len(key_table_names(search_space_page)) >= 20


@pytest.mark.parametrize("key", search_space.TOP_KEYS)
def test_top_level_key_is_in_the_table(search_space_page: str, key: str) -> None:
    assert key in key_table_names(search_space_page), f"docs/search-space.md's key table has no row for `{key}`"


@pytest.mark.parametrize("key", search_space.DATA_KEYS)
def test_data_key_is_in_the_table(search_space_page: str, key: str) -> None:
    assert f"data.{key}" in key_table_names(search_space_page), \
        f"docs/search-space.md's key table has no row for `data.{key}`"


@pytest.mark.parametrize("key", sorted({k for keys in params.PARAM_KEYS.values() for k in keys}))
def test_param_key_is_in_the_table(search_space_page: str, key: str) -> None:
    assert key in key_table_names(search_space_page), f"docs/search-space.md's param spec table has no row for `{key}`"


@pytest.mark.parametrize("key", sorted(search_space.DEFAULTS))
def test_default_is_in_the_table(search_space_page: str, key: str) -> None:
    """The default column says what DEFAULTS says; None is `null` or a derived name."""
    default = search_space.DEFAULTS[key]
    cell = key_table_rows(search_space_page)[key][1]
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


def documented_commands(page: Path) -> list[list[str]]:
    return [argv for line in shell_lines(page.read_text()) for argv in sweep_commands(line)]


COMMAND_LINES = [(page_name(page), argv) for page in pages() for argv in documented_commands(page)]


def test_the_front_page_has_command_lines() -> None:
    assert len(documented_commands(README)) >= 5


def test_the_docs_pages_have_command_lines() -> None:
    assert len(COMMAND_LINES) > len(documented_commands(README))


def test_sweep_commands_are_extracted() -> None:
    assert sweep_commands("SWEEP_STORAGE=x.journal sweep best --format yaml > best.yaml  # note") == [
        ["best", "--format", "yaml"]]
    assert sweep_commands("sweep run -q 2>/dev/null && sweep best | head") == [["run", "-q"], ["best"]]
    assert sweep_commands("python sweep.py validate --config a.yaml") == [["validate", "--config", "a.yaml"]]
    assert sweep_commands("mlflow ui --backend-store-uri sqlite:///mlflow.db") == []


def strict_parser() -> argparse.ArgumentParser:
    """sweep's parser, refusing abbreviated options, so `--n-trial` in the README is a typo."""
    parser = cli._parser()
    for each in [parser, *subcommands_of(parser).values()]:
        each.allow_abbrev = False
    return parser


def parses(argv: list[str]) -> bool:
    try:
        strict_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse's way to refuse; and to answer --help or --version
        return exit_.code == 0
    return True


def test_a_wrong_command_line_does_not_parse() -> None:
    assert parses(["run", "--n-trials", "5"])
    assert not parses(["run", "--n-trial", "5"])
    assert not parses(["validate", "--storage", "x.journal"])
    assert not parses(["export"])


@pytest.mark.parametrize(("page", "argv"), COMMAND_LINES,
                         ids=[f"{page}: {shlex.join(argv)}" for page, argv in COMMAND_LINES])
def test_command_line_parses(page: str, argv: list[str]) -> None:
    assert parses(argv), f"`sweep {shlex.join(argv)}` in {page} does not parse"


# ---------------------------------------------------------------- the pages and their links

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` there is no heading, `[x](y)` no link)."""
    return FENCE.sub("", text)


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not SCHEME.match(target)]


def linked_file(page: Path, target: str) -> Path:
    path = target.partition("#")[0]
    return (page.parent / path).resolve() if path else page.resolve()


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(page: Path) -> set[str]:
    anchors, seen = set(), Counter()
    for heading in re.findall(r"^#{1,6} +(.+?)\s*$", prose(page.read_text()), re.MULTILINE):
        anchor = github_anchor(heading)
        anchors.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return anchors


def test_the_front_page_is_short(readme: str) -> None:
    lines = len(readme.splitlines())
    assert lines <= FRONT_PAGE_MAX_LINES, f"README.md has {lines} lines; move the details to a page under docs/"


def test_the_docs_pages_are_found() -> None:
    assert SEARCH_SPACE_PAGE in docs_pages()


@pytest.mark.parametrize("page", docs_pages(), ids=page_name)
def test_every_docs_page_is_linked_from_the_front_page(page: Path) -> None:
    linked = {linked_file(README, target) for target in relative_links(README)}
    assert page.resolve() in linked, f"README.md does not link {page_name(page)}"


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_relative_links_point_to_files_that_exist(page: Path) -> None:
    assert [target for target in relative_links(page) if not linked_file(page, target).exists()] == []


@pytest.mark.parametrize("page", pages(), ids=page_name)
def test_links_to_a_heading_name_one_that_exists(page: Path) -> None:
    """`page.md#anchor` and `#anchor`: the page has a heading with that anchor."""
    broken = [target for target in relative_links(page) if "#" in target
              if linked_file(page, target).suffix == ".md" and linked_file(page, target).exists()
              and target.partition("#")[2] not in heading_anchors(linked_file(page, target))]
    assert broken == []


def test_links_are_found() -> None:
    assert "docs/search-space.md#which-study" in relative_links(README)
    assert github_anchor("Continuing with --from, 2026-11-30") == "continuing-with---from-2026-11-30"
    assert github_anchor("Deployment numbers: predict_ms and model_bytes") == \
        "deployment-numbers-predict_ms-and-model_bytes"
