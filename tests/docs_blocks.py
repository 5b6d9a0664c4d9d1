"""Reading the commands and code out of README.md and docs/**/*.md (for tests/test_docs.py); no tests here.

What counts as a command (README.md, *Tests*, says the same to readers):

- every line of a fenced block labelled ``bash``, ``sh``, ``shell`` or ``console``, and of a block indented
  by four spaces; a line ending in ``\\`` continues on the next, ``# ...`` after a command is a comment,
  and lines that are only a comment are not commands;
- every fenced ``python`` block is code (README's run as one script, in order);
- inline code (`python -m train --help` inside a sentence) is a reference, not a command to run: its
  module must exist and its ``--flags`` must be in the module's ``--help``, like every command's.

A block is an example that is not run when the last non-blank line before it is a marker:

    <!-- not run: REASON -->                          every command of the block
    <!-- not run `TEXT`: REASON; `TEXT`: REASON -->   the commands that contain a TEXT
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s{0,3}(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"<!--\s*not run\b(.*?)-->", re.S)
MARKED_TEXT = re.compile(r"`([^`]+)`\s*:\s*([^;]+)")
#: Words that start a shell command in a block that is not labelled as shell.
COMMAND_WORDS = ("python ", "python3 ", "pip ", "torchrun ")


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    """The path from the repository root (a file elsewhere: its name)."""
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def normalize(command: str) -> str:
    """One line, single spaces: how commands are compared."""
    return " ".join(command.split())


@dataclass
class Marker:
    """A ``<!-- not run ... -->`` marker: a reason for the whole block, or reasons for the commands that
    contain a text."""

    text: str
    block_reason: str | None = None
    texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Marker:
        body = text.strip()
        if body.startswith(":"):
            return cls(text, block_reason=body[1:].strip())
        texts = {normalize(t): r.strip() for t, r in MARKED_TEXT.findall(body)}
        return cls(text, texts=texts)

    def reason(self, command: str) -> str | None:
        if self.block_reason is not None:
            return self.block_reason
        for text, why in self.texts.items():
            if text in command:
                return why
        return None


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the block's first line (the fence, or the first indented line)
    lang: str  # "shell", "python" or the fence's label ("" when none)
    lines: list[tuple[int, str]]
    marker: Marker | None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Command:
    doc: str
    line: int
    text: str  # normalized: continuation lines joined, the trailing comment dropped
    reason: str | None  # why it is not run (from the block's marker), None when it must be run
    block: Block

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _marker_before(lines: list[str], start: int) -> Marker | None:
    """The marker ending on the last non-blank line before ``lines[start]``, if any."""
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i < 0 or not lines[i].rstrip().endswith("-->"):
        return None
    j = i
    while j >= 0 and "<!--" not in lines[j]:
        j -= 1
    found = MARKER.search("\n".join(lines[max(j, 0):i + 1]))
    return Marker.parse(found.group(1)) if found else None


def blocks(path: Path) -> list[Block]:
    """The fenced and indented code blocks of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            mark, label = fence.group(1), fence.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(mark):
                j += 1
            lang = "shell" if label in SHELL_LANGS else label
            out.append(Block(rel(path), i + 1, lang, [(k + 1, lines[k]) for k in range(i + 1, j)],
                             _marker_before(lines, i)))
            i = j + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            while not lines[j - 1].strip():
                j -= 1
            out.append(Block(rel(path), i + 1, "shell", [(k + 1, lines[k][4:]) for k in range(i, j)],
                             _marker_before(lines, i)))
            i = j
            continue
        i += 1
    return out


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def commands(block: Block) -> list[Command]:
    """The commands of a shell block (continuations joined, comments dropped)."""
    out: list[Command] = []
    pending: list[str] = []
    first = 0
    for number, raw in block.lines:
        text = strip_comment(raw).rstrip()
        if not pending:
            first = number
        if text.endswith("\\"):
            pending.append(text[:-1])
            continue
        pending.append(text)
        command = normalize(" ".join(pending))
        pending = []
        if command:
            reason = block.marker.reason(command) if block.marker else None
            out.append(Command(block.doc, first, command, reason, block))
    return out


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path)]


def all_commands() -> list[Command]:
    return [c for b in all_blocks() if b.lang == "shell" for c in commands(b)]


def prose(path: Path) -> str:
    """The Markdown text outside code blocks and HTML comments (code block lines become blank)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in blocks(path):
        first = block.line - 1
        last = block.lines[-1][0] if block.lines else block.line
        if block.lang not in ("shell",) or FENCE.match(lines[first]):  # fenced: blank the fences too
            last += 1
        for k in range(first, min(last, len(lines))):
            lines[k] = ""
    return re.sub(r"<!--.*?-->", "", "\n".join(lines), flags=re.S)


def inline_code(path: Path) -> list[str]:
    """Every `inline code` span of the prose (a span may continue over line breaks, not paragraphs)."""
    paragraphs = re.split(r"\n\s*\n", prose(path))
    return [normalize(s) for par in paragraphs for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", par)]
