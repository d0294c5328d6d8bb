"""The commands README.md and docs/*.md print for a user to copy, and the
other fenced blocks tests take from the guides (files to save, expected
output). Shared by tests/e2e/test_docs_commands.py (the inventory) and the
tests that run the commands, so that they run what the docs print.

A command block is a fence tagged sh, bash, shell, console or powershell, or
an untagged fence whose first line starts with "$ ". In a block with "$ "
lines, those are the commands and the other lines their output; otherwise
every line that is neither empty nor a comment is a command (a trailing
backslash, in PowerShell a backtick, continues it on the next line), and an
alternative in its trailing comment (`cmd   # or: other`) is one too.
"""

import glob
import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FENCE_RE = re.compile(r"^```([a-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
COMMAND_LANGS = {"sh", "bash", "shell", "console", "powershell"}


def doc_paths():
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


class Block:
    def __init__(self, path, line, lang, text):
        self.path, self.line, self.lang, self.text = path, line, lang, text

    @property
    def first_line(self):
        return self.text.split("\n", 1)[0]


class Command:
    def __init__(self, path, line, lang, text, comment, output):
        self.path = path          # relative to ROOT
        self.line = line          # of the command's first line in the file
        self.lang = lang          # of its block ("" untagged)
        self.text = text          # as printed, continuation lines joined with one space
        self.comment = comment    # the comment lines just above it, joined
        self.output = output      # the lines shown after it ("$ " blocks), else []

    @property
    def name(self):
        return f"{self.path}:{self.line}"

    @property
    def command(self):
        """The text without a trailing shell comment (`  # ...`)."""
        return re.sub(r"\s+#\s.*$", "", self.text) if self.lang != "powershell" else self.text


def blocks(path):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    for m in FENCE_RE.finditer(text):
        yield Block(path, text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2))


def is_command_block(b):
    return b.lang in COMMAND_LANGS or (b.lang == "" and b.text.lstrip().startswith("$ "))


def block_commands(b):
    lines = b.text.rstrip("\n").split("\n")
    prompted = any(l.startswith("$ ") for l in lines)
    out, comment, pending, start = [], [], "", None
    for k, line in enumerate(lines):
        if prompted and not pending:
            if line.startswith("$ "):
                line = line[2:]
            else:
                if out:
                    out[-1].output.append(line)
                continue
        if not pending and line.lstrip().startswith("#"):
            comment.append(line.lstrip("# ").strip())
            continue
        if not line.strip():
            comment = []
            continue
        if start is None:
            start = b.line + k
        cont = "`" if b.lang == "powershell" else "\\"
        pending += line.rstrip().rstrip(cont).strip() + " "
        if line.rstrip().endswith(cont):
            continue
        out.append(Command(b.path, start, b.lang, pending.strip(), " ".join(comment), []))
        # `cmd   # or: other command`: the alternative is a command to copy too
        alt = re.search(r"\s#\s+or:\s+(.*)$", pending) if b.lang != "powershell" else None
        if alt:
            out.append(Command(b.path, start, b.lang, alt.group(1).strip(), out[-1].comment, []))
        pending, start, comment = "", None, []
    return out


def all_commands():
    return [c for path in doc_paths() for b in blocks(path) if is_command_block(b) for c in block_commands(b)]


def commands(path, program=None):
    """The commands of one file, or those running `program`."""
    return [c for c in all_commands() if c.path == path and (program is None or c.text.split()[0] == program)]


def command(path, text):
    """The command of `path` printed exactly as `text` (its trailing comment
    aside): a test that runs it fails once the docs print something else."""
    found = [c for c in commands(path) if c.command == text or c.text == text]
    assert found, f"{path} no longer prints the command {text!r}; it prints: {[c.text for c in commands(path)]}"
    return found[0]


def block(path, first_line):
    """The text of the one fenced block of `path` whose first line is `first_line`."""
    found = [b for b in blocks(path) if b.first_line == first_line]
    assert len(found) == 1, f"{path}: expected one block starting {first_line!r}, found {len(found)}"
    return found[0].text
