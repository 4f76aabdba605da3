"""The README and docs/ say only true things about the repository.

Checked: the README's length; every relative link in ``README.md`` and ``docs/*.md`` (with its
``#anchor`` when the target is a Markdown file); every ``make X`` target they show; every
``llmopt ...`` command in their shell code blocks (its sub-command answers ``--help``, its
options exist, the repository files it reads exist); no pointer to the ``shared`` folder beside
the repository (a user's clone does not have it); every ``Settings`` field documented in
``docs/configuration.md``.

The checkers return a list of problems, each naming the file and what is wrong; the last tests
feed them broken input, so a broken README cannot pass unnoticed.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_README_LINES = 200

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
INLINE_CODE = re.compile(r"(`+)(?P<code>.+?)\1")
LLMOPT_WORD = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?llmopt(?:\s|$)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.*?)\s*#*\s*$")
MAKE_CALL = re.compile(r"(?:^|[\s;&|(])make\s+(?P<args>[^;&|)#`]*)")
MAKE_TARGET = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*)\s*:(?!=)", re.MULTILINE)
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
COMMAND_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
INPUT_OPTIONS = {"--data", "--from-evals"}
"""Options whose value is a file the command reads: it must exist in the repository."""
DATA_FILE = re.compile(r"^[\w.-]+(?:/[\w.-]+)+\.(?:parquet|csv|ya?ml|npz)$")
"""A repository-relative data file shown as an argument (outputs are .json/.png: not checked)."""
SHARED = ("../" + "shared", "/work/" + "shared")
"""A folder beside the repository on the developers' machines (spelt in two parts so that
this file does not match a search for it)."""


def documents() -> list[Path]:
    """The README and every page under docs/."""
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# -- Markdown parsing ------------------------------------------------------------------------


def code_blocks(text: str) -> Iterator[tuple[str, int, str]]:
    """Fenced code blocks as ``(language, first line number, body)``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, language, start = m["fence"], m["info"].strip().split(" ")[0].lower(), i + 2
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield language, start, "\n".join(body)


def outside_blocks(text: str) -> list[str]:
    """The lines of ``text`` with those of fenced code blocks blanked (numbering kept)."""
    kept: list[str] = []
    in_block: str | None = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if in_block is None and m:
            in_block = m["fence"]
            kept.append("")
        elif in_block is not None:
            if line.strip().startswith(in_block):
                in_block = None
            kept.append("")
        else:
            kept.append(line)
    return kept


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where links are links)."""
    return "\n".join(INLINE_CODE.sub("", line) for line in outside_blocks(text))


def inline_code(text: str) -> list[str]:
    """The inline code spans outside fenced code blocks."""
    return [m["code"] for line in outside_blocks(text) for m in INLINE_CODE.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = unicodedata.normalize("NFKC", text).strip().lower().replace("`", "")
    text = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in outside_blocks(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m["title"])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


# -- checkers: each returns its problems, one sentence each ----------------------------------


def readme_length_problems(path: Path, limit: int = MAX_README_LINES) -> list[str]:
    n = len(path.read_text(encoding="utf-8").splitlines())
    if n <= limit:
        return []
    return [f"{_rel(path)} has {n} lines; the limit is {limit} (move details to docs/)"]


def link_problems(doc: Path, repo: Path = REPO) -> list[str]:
    """Relative links of ``doc`` whose file (or Markdown anchor) does not exist."""
    problems: list[str] = []
    text = doc.read_text(encoding="utf-8")
    for m in LINK.finditer(prose(text)):
        target = m["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        where = f"{_rel(doc)}: link ({target})"
        if path_part.startswith("/"):
            problems.append(f"{where} is absolute; use a path relative to {_rel(doc)}")
            continue
        if not dest.exists():
            problems.append(f"{where} points at {path_part}, which does not exist")
            continue
        if not dest.resolve().is_relative_to(repo.resolve()):
            problems.append(f"{where} points outside the repository")
            continue
        if anchor and dest.suffix == ".md":
            known = anchors(dest.read_text(encoding="utf-8"))
            if anchor not in known:
                problems.append(
                    f"{where}: {_rel(dest)} has no heading with anchor #{anchor} "
                    f"(anchors: {', '.join(sorted(known)) or 'none'})"
                )
    return problems


def makefile_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    return {m["name"] for m in MAKE_TARGET.finditer(makefile.read_text(encoding="utf-8"))}


def make_problems(doc: Path, targets: set[str]) -> list[str]:
    """``make X`` in code (blocks and inline spans) whose target X the Makefile lacks."""
    text = doc.read_text(encoding="utf-8")
    code = [body for _, _, body in code_blocks(text)] + inline_code(text)
    problems: list[str] = []
    for chunk in code:
        for line in chunk.splitlines():
            for m in MAKE_CALL.finditer(line):
                for word in m["args"].split():
                    if word.startswith("-") or ENV_ASSIGNMENT.match(word):
                        continue
                    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", word):
                        break  # prose after the command, e.g. "make up` starts ..."
                    if word not in targets:
                        problems.append(
                            f"{_rel(doc)}: `make {word}` is shown, but the Makefile has no "
                            f"target {word!r} (targets: {', '.join(sorted(targets))})"
                        )
    return problems


def logical_lines(body: str, start: int) -> Iterator[tuple[int, str]]:
    """A shell block's lines, ``$ `` prompts dropped, ``\\`` continuations joined."""
    pending, first = "", start
    for offset, raw in enumerate(body.splitlines()):
        if not pending:
            first = start + offset
        line = raw[2:] if raw.startswith("$ ") else raw
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def simple_commands(line: str) -> list[list[str]]:
    """The argv of each command of a shell line (``&&``, ``;``, ``|`` split, comments and
    leading ``VAR=value`` assignments dropped); ``ValueError`` if the quoting is broken."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in COMMAND_SEPARATORS:
            commands.append([])
        elif commands[-1] or not ENV_ASSIGNMENT.match(token):
            commands[-1].append(token)
    return [argv for argv in commands if argv]


def shell_commands(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, argv)`` of every command on a line naming ``llmopt``, in shell blocks.

    Other lines (program output, other tools) are not parsed. A line whose quoting is broken
    gives ``["<unparsable>", reason]``.
    """
    for language, start, body in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        for number, line in logical_lines(body, start):
            if not LLMOPT_WORD.search(line):
                continue
            try:
                commands = simple_commands(line)
            except ValueError as exc:
                yield number, ["<unparsable>", f"{line.strip()} ({exc})"]
                continue
            for argv in commands:
                yield number, argv


def llmopt_problems(doc: Path, repo: Path = REPO) -> list[str]:
    """``llmopt ...`` commands in shell blocks that would not run as shown."""
    import typer  # noqa: PLC0415
    from typer.core import TyperGroup  # noqa: PLC0415
    from typer.testing import CliRunner  # noqa: PLC0415

    from llmopt.app.cli import app  # noqa: PLC0415

    root = typer.main.get_command(app)
    runner = CliRunner()
    problems: list[str] = []
    for number, argv in shell_commands(doc.read_text(encoding="utf-8")):
        where = f"{_rel(doc)}:{number}"
        if argv[0] == "<unparsable>":
            problems.append(f"{where}: cannot parse the shell line {argv[1]}")
            continue
        if Path(argv[0]).name != "llmopt":
            continue
        args = argv[1:]
        command: Any = root  # typer vendors click: its classes are typer's own
        path: list[str] = []
        while isinstance(command, TyperGroup) and args and not args[0].startswith("-"):
            sub = command.commands.get(args[0])
            if sub is None:
                problems.append(
                    f"{where}: `llmopt {' '.join(path + [args[0]])}` is not a command "
                    f"(known: {', '.join(sorted(command.commands))})"
                )
                break
            path.append(args.pop(0))
            command = sub
        else:
            shown = f"llmopt {' '.join(path)}".strip()
            result = runner.invoke(app, [*path, "--help"])
            if result.exit_code != 0:
                problems.append(
                    f"{where}: `{shown} --help` exits with {result.exit_code}: "
                    f"{(result.output or repr(result.exception)).strip()[:300]}"
                )
            options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            for i, arg in enumerate(args):
                name = arg.split("=", 1)[0]
                if arg.startswith("-") and name not in options:
                    problems.append(
                        f"{where}: `{shown}` has no option {name} "
                        f"(options: {', '.join(sorted(options))})"
                    )
                value_of = args[i - 1] if i > 0 else ""
                reads = value_of in INPUT_OPTIONS or DATA_FILE.match(arg)
                if reads and not arg.startswith("-") and not (repo / arg).exists():
                    problems.append(
                        f"{where}: `{shown}` reads {arg}, which is not in the repository "
                        "(a fresh clone has only what is committed)"
                    )
    return problems


def shared_problems(doc: Path) -> list[str]:
    problems: list[str] = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for needle in SHARED:
            if needle in line:
                problems.append(
                    f"{_rel(doc)}:{number} points at {needle}, which a user's clone does not "
                    "have; cite the repository's own docs/ or data instead"
                )
    return problems


def settings_problems(page: Path) -> list[str]:
    from llmopt.settings import Settings  # noqa: PLC0415

    text = page.read_text(encoding="utf-8")
    return [
        f"{_rel(page)} does not document LLMOPT_{name.upper()} (a field of llmopt/settings.py)"
        for name in Settings.model_fields
        if f"LLMOPT_{name.upper()}" not in text
    ]


# -- the repository's documents ---------------------------------------------------------------


def _report(problems: list[str]) -> str:
    return "\n".join(["", *problems])


def test_readme_is_at_most_200_lines() -> None:
    problems = readme_length_problems(README)
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", documents(), ids=_rel)
def test_relative_links_resolve(doc: Path) -> None:
    problems = link_problems(doc)
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", documents(), ids=_rel)
def test_make_targets_exist(doc: Path) -> None:
    problems = make_problems(doc, makefile_targets())
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", documents(), ids=_rel)
def test_llmopt_commands_parse(doc: Path) -> None:
    problems = llmopt_problems(doc)
    assert not problems, _report(problems)


def test_readme_shows_llmopt_commands() -> None:
    commands = [a for _, a in shell_commands(README.read_text(encoding="utf-8"))]
    assert any(Path(a[0]).name == "llmopt" for a in commands), (
        "README.md shows no `llmopt ...` command in a shell block, so none is checked"
    )


@pytest.mark.parametrize("doc", documents(), ids=_rel)
def test_nothing_points_at_shared(doc: Path) -> None:
    problems = shared_problems(doc)
    assert not problems, _report(problems)


def test_readme_keeps_the_ci_test_command() -> None:
    blocks = [body for lang, _, body in code_blocks(README.read_text(encoding="utf-8"))]
    assert any(re.search(r"^make test\b", b, re.MULTILINE) for b in blocks), (
        "README.md must show `make test` in a code block (CI reads it as the test command)"
    )


def test_configuration_page_lists_every_setting() -> None:
    problems = settings_problems(REPO / "docs" / "configuration.md")
    assert not problems, _report(problems)


# -- the checkers catch what they are for -----------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "README.md") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_checkers_catch_broken_documents(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    _write(tmp_path, "# Page\n\n## A `code` heading (x)\n", "docs/page.md")
    doc = _write(
        tmp_path,
        "# Title\n\n"
        "[ok](docs/page.md) [anchor](docs/page.md#a-code-heading-x) [self](#title)\n"
        "[web](https://example.com) `[not a link](nowhere.md)`\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#nope) [bad self](#nope)\n\n"
        f"Run `make demo` and `make nope`; see {SHARED[0]}/STYLE.md.\n\n"
        "```bash\n"
        "make test\n"
        ".venv/bin/llmopt bench replay --data llmopt/data/alpaca_eval.parquet --out r.json\n"
        "llmopt bench replay --data data/missing.parquet --out r.json --colour red\n"
        "PREFECT_API_URL=http://x llmopt flows serve   # a comment\n"
        "llmopt nosuch --help && llmopt registry promote 3 --alias staging\n"
        "```\n\n"
        "```python\nllmopt nosuch  # not shell: not checked\n```\n" + "filler\n" * 200,
    )
    length = readme_length_problems(doc)
    assert len(length) == 1 and "the limit is 200" in length[0], length
    links = link_problems(doc, repo=tmp_path)
    assert len(links) == 3, links
    assert "docs/missing.md, which does not exist" in links[0]
    assert "no heading with anchor #nope" in links[1] and "no heading with anchor #nope" in links[2]
    makes = make_problems(doc, {"demo", "test"})
    assert len(makes) == 1 and "`make nope`" in makes[0], makes
    shared = shared_problems(doc)
    assert len(shared) == 1 and SHARED[0] in shared[0], shared
    commands = llmopt_problems(doc)
    assert len(commands) == 3, commands
    assert "reads data/missing.parquet, which is not in the repository" in commands[0]
    assert "has no option --colour" in commands[1]
    assert "`llmopt nosuch` is not a command" in commands[2]


def test_shell_commands_split_and_join() -> None:
    text = (
        "```console\n"
        "$ cd feature_repo && ../.venv/bin/llmopt db stats | head\n"
        "A=1 B=2 llmopt flows run hpo \\\n"
        "    --param n_trials=30   # continued\n"
        'llmopt decide \'{"tenant": "acme", "prompt": "a # b"}\'\n'
        "```\n"
    )
    got = [argv for _, argv in shell_commands(text)]
    assert got == [
        ["cd", "feature_repo"],
        ["../.venv/bin/llmopt", "db", "stats"],
        ["head"],
        ["llmopt", "flows", "run", "hpo", "--param", "n_trials=30"],
        ["llmopt", "decide", '{"tenant": "acme", "prompt": "a # b"}'],
    ]


def test_slug_matches_github() -> None:
    assert slug("Speed against the peers (`python -m bench peer_speed`)") == (
        "speed-against-the-peers-python--m-bench-peer_speed"
    )
    assert slug("BentoML 1.4") == "bentoml-14"
    assert slug("Faults, bad input, security") == "faults-bad-input-security"
