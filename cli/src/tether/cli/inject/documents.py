"""A multi-document YAML stream split into its documents, each kept as the text it was.

A document that ``tether inject`` does not change is written back byte for byte (comments, quoting and
layout included); one it changes is dumped again with its keys in their original order, after the comment
lines that preceded it. The split is textual: a line that starts with ``---`` (then a space, a tab or its
end) is a document marker wherever it appears, since YAML forbids such a line inside any scalar.

Values are read as Kubernetes reads them, not quite as PyYAML's YAML 1.1 would: an unquoted ``2024-01-01``
stays a string (no timestamp), ``=`` is a string, and a key given twice is an error, as kubectl makes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from tether.cli.inject.errors import InvalidInput

_MARKER = re.compile(r"---(?=[ \t\r\n]|$)")
_NOT_TYPES = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
# Long lines (commands, PEM) are never folded: a golden file or a diff reads better unwrapped.
_WIDTH = 1 << 16


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: the constructor reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"key {key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NOT_TYPES]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (a PEM bundle, a script) as literal blocks; no anchors and aliases
    (kubectl expands them anyway, and a value used twice is clearer written twice)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif dumper.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":  # type: ignore[no-untyped-call]
        style = '"'  # "8080", "true", "": quoted as kubectl quotes them
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(value: Any) -> str:
    text: str = yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=_WIDTH
    )
    return text


@dataclass
class Document:
    """One document of the stream: its text as read, and what it holds once parsed."""

    raw: str
    # Counted from 1 over the documents that hold anything but comments (kubectl ignores the others).
    number: int
    # 1-based line in the input where the document's own text starts (after its --- marker).
    line: int
    marker: str
    body: str
    value: Any = None
    changed: bool = False

    @property
    def empty(self) -> bool:
        return self.number == 0

    def render(self) -> str:
        if not self.changed:
            return self.raw
        prefix = self.marker and "---\n"
        return prefix + _comment_header(self.body) + dump(self.value)


def _comment_header(body: str) -> str:
    lines = []
    for line in body.splitlines(keepends=True):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def _has_content(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _only_directives(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines()]
    content = [line for line in lines if line and not line.startswith("#")]
    return bool(content) and all(line.startswith("%") for line in content)


def split(text: str) -> list[Document]:
    """The documents of ``text``, in order, each with its raw text; nothing parsed yet."""
    chunks: list[tuple[int, str, list[str]]] = []  # (line number, marker line, lines)
    line_number = 1
    current: tuple[int, str, list[str]] = (1, "", [])
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line) and not _only_directives("".join(current[2])):
            chunks.append(current)
            current = (line_number, line, [line[3:].lstrip(" \t")] if line[3:].strip() else [])
        else:
            current[2].append(line)
        line_number += 1
    chunks.append(current)
    documents = []
    number = 0
    for start, marker, lines in chunks:
        body = "".join(lines)
        if not marker and not body:
            continue
        inline = bool(marker[3:].strip())  # "--- |" or "--- # note": the body starts on the marker's line
        raw = marker + "".join(lines[1:] if inline else lines)
        first_line = start if inline or not marker else start + 1
        if _has_content(body):
            number += 1
            documents.append(Document(raw, number, first_line, marker, body))
        else:
            documents.append(Document(raw, 0, first_line, marker, body))
    return documents


def parse(document: Document, source: str) -> None:
    """Parse ``document.value``; InvalidInput naming the document, its line and the parser's message."""
    if document.empty:
        return
    try:
        document.value = yaml.load(document.body, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {document.line + mark.line}" if mark is not None else ""
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise InvalidInput(
            f"{source}: document {document.number}{line}: {problem}",
            "fix the YAML (documents are separated by --- lines)",
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{source}: document {document.number}: {str(exc).splitlines()[0]}", "fix the YAML"
        ) from None


def join(documents: list[Document]) -> str:
    parts: list[str] = []
    for document in documents:
        text = document.render()
        if parts and not parts[-1].endswith("\n") and text:
            parts[-1] += "\n"
        parts.append(text)
    return "".join(parts)
