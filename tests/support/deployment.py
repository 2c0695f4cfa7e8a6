"""The deployment files as Docker reads them: the Dockerfile's instructions and inputs, what .dockerignore leaves out."""

import json
import re
import shlex
from pathlib import Path

from tests.support.host import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "compose.yaml"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Each instruction as (KEYWORD, its arguments), continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction_arguments(keyword: str) -> list[str]:
    """The arguments of every instruction of one kind, in order."""
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def exec_form(arguments: str) -> list[str]:
    """A CMD's arguments: its JSON array, or the words of its shell form."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def environment() -> dict[str, str]:
    """Every variable the Dockerfile's ENV instructions set."""
    variables = {}
    for arguments in instruction_arguments("ENV"):
        variables.update(word.split("=", 1) for word in shlex.split(arguments))
    return variables


def copied_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions take (their last word is the destination)."""
    sources = []
    for arguments in instruction_arguments("COPY"):
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources += [word.rstrip("/") for word in words[:-1]]
    return sources


def _pattern(text: str) -> re.Pattern:
    # Docker's rules: "**/" is any number of folders, "*" and "?" stay within one.
    translated = ""
    rest = text.strip().strip("/")
    while rest:
        if rest.startswith("**/"):
            translated, rest = translated + "(.*/)?", rest[3:]
        elif rest.startswith("**"):
            translated, rest = translated + ".*", rest[2:]
        elif rest[0] == "*":
            translated, rest = translated + "[^/]*", rest[1:]
        elif rest[0] == "?":
            translated, rest = translated + "[^/]", rest[1:]
        else:
            translated, rest = translated + re.escape(rest[0]), rest[1:]
    return re.compile(translated)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps a path (relative to the repository) out of the build context.

    A pattern excludes what it names and everything under it; the last
    pattern that matches decides, and a ``!`` pattern brings a path back.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = _pattern(line.removeprefix("!"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not keep
    return excluded
