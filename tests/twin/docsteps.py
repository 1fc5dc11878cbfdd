"""docs/cluster.md as data: its numbered steps, their shell commands, and what kind of action each command is.

The executed-docs test walks these steps against the twin: every command of a topology must be one the walker
models (a Kubernetes object it creates, a cluster it builds, a Helm release it renders, a Shipyard or Prefect
command it runs) or one it names as outside the twin (AWS APIs, image builds); a command of any other kind fails
the walk, so a doc step that cannot be followed as written is caught.

Commands are parsed the way a shell reads the blocks: comments dropped, backslash continuations joined, ``&&``
lists split, ``for ... done`` loops kept whole, ``envsubst ... < FILE | TOOL`` pipes read as TOOL on FILE.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra import REPO

DOC = REPO / "docs" / "cluster.md"
_STEP = re.compile(r"^\*\*(?P<number>\d+)\. (?P<title>[^*]+)\*\*")
_FENCE = re.compile(r"^```")


@dataclass(frozen=True)
class Command:
    """One shell command of a doc step, with what it does in the walker's terms."""

    text: str  # as written (continuations joined)
    kind: str  # see classify()
    argv: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # the infra files a pipe or -f names
    substitute: tuple[str, ...] = ()  # the variables envsubst fills in


@dataclass
class Step:
    """A numbered step (``**5. The namespace and MLflow**``) or a section's unnumbered block."""

    section: str
    number: int | None
    title: str
    commands: list[Command] = field(default_factory=list)


def _logical_lines(block: list[str]) -> list[str]:
    """Join continuations and loops into the commands a shell would run, comments removed."""
    joined: list[str] = []
    buffer = ""
    for raw in block:
        line = _strip_comment(raw).rstrip()
        if not line.strip() and not buffer:
            continue
        if line.endswith("\\"):
            buffer += line[:-1].strip() + " "
            continue
        buffer += line.strip()
        joined.append(buffer)
        buffer = ""
    commands: list[str] = []
    depth, loop = 0, ""
    for line in joined:
        words = re.findall(r"\b(for|do|done)\b", line)
        if depth or line.startswith("for "):
            loop += line + "\n"
            depth += words.count("for") - words.count("done")
            if depth <= 0:
                commands.append(loop.strip())
                depth, loop = 0, ""
            continue
        commands.extend(part.strip() for part in _split_and(line) if part.strip())
    return commands


def _strip_comment(line: str) -> str:
    """Drop a trailing shell comment (a ``#`` outside quotes that starts a word)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _split_and(line: str) -> list[str]:
    parts, quote, depth, start = [], "", 0, 0
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif line.startswith("&&", i) and not depth:
            parts.append(line[start:i])
            start = i + 2
    parts.append(line[start:])
    return parts


def classify(text: str) -> Command:
    """Return the command with its kind: the walker's name for what it does."""
    if text.startswith("for "):
        return Command(text, "aws-loop" if re.search(r"\baws ", text) else "unknown-loop")
    pipe = re.fullmatch(r"(?P<env>(?:\w+=\S+ )*)envsubst '(?P<vars>[^']*)' < (?P<file>\S+) \| (?P<rest>.+)", text)
    if pipe:
        rest = shlex.split(pipe["rest"])
        variables = tuple(v.lstrip("$") for v in pipe["vars"].split())
        kind = _kind(rest)
        return Command(text, kind, tuple(rest), (pipe["file"],), variables)
    assignment = re.fullmatch(r"(?:export )?(?P<name>[A-Z_]+)=(?P<value>.*)", text)
    if assignment:
        return Command(text, "aws-query" if "$(aws " in text else "set-variable", (assignment["name"],
                                                                                   assignment["value"]))
    argv = shlex.split(text.rstrip("&").strip())
    files = tuple(argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f" and argv[i + 1] != "-")
    return Command(text, _kind(argv), tuple(argv), files)


def _kind(argv: list[str]) -> str:
    """Name what an argv does: '<tool>-<verb>' (kubectl-apply, helm-install, eksctl-create-cluster, ...)."""
    tool = argv[0]
    words = [a for a in argv[1:] if not a.startswith("-")]
    if tool == "kubectl":
        args = _drop_flag_values(argv[1:], {"-n", "--context", "-o", "--field-selector", "-f"})
        return f"kubectl-{args[0]}" if args[0] != "config" else f"kubectl-config-{args[1]}"
    if tool in ("helm", "eksctl", "aws", "docker", "shipyard", "prefect"):
        return "-".join([tool, *words[:2]]) if tool in ("eksctl", "aws") else "-".join([tool, *words[:1]])
    if tool == "set":
        return "shell-set"
    return f"unknown-{tool}"


def _drop_flag_values(args: list[str], with_value: set[str]) -> list[str]:
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif not a.startswith("-"):
            kept.append(a)
    return kept


def steps(path: Path = DOC) -> list[Step]:
    """Return every step of the doc that has shell commands, in order, with the ``##`` section it is in."""
    found: list[Step] = []
    section, current = "", None
    block: list[str] | None = None
    for line in path.read_text().splitlines():
        if block is not None:
            if _FENCE.match(line):
                target = current or Step(section, None, section)
                target.commands.extend(classify(c) for c in _logical_lines(block))
                if target not in found:
                    found.append(target)
                block = None
            else:
                block.append(line)
            continue
        if line.startswith("## "):
            section, current = line[3:].strip(), None
        elif (match := _STEP.match(line)) is not None:
            current = Step(section, int(match["number"]), match["title"].strip().rstrip(":"))
        elif line.startswith("```bash"):
            block = []
    return found


def section(name_starts: str, path: Path = DOC) -> list[Step]:
    """Return the steps of the ``##`` section whose title starts with ``name_starts``."""
    return [s for s in steps(path) if s.section.startswith(name_starts)]
