"""Every key of a config group, its type, default and help, read from the schema that defines it.

    python -m lora_research.config_help                 # the groups and their choices
    python -m lora_research.config_help method lora     # method=lora: every key
    python -m lora_research.config_help trainer         # model / trainer / logger have one schema each
    python -m lora_research.config_help task e2e        # a task by name (conf/task/e2e.yaml) or kind

The help of a key is the comment on its line in the dataclass (``r: int = 8  # rank of ...``), so the
schema is the one place a default and its meaning are written.
"""
from __future__ import annotations

import inspect
import io
import sys
import tokenize
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Optional

from lora_research.config import GROUP_SCHEMAS, schema_defaults
from lora_research.methods import METHODS, get_method_class
from lora_research.tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXED = GROUP_SCHEMAS


def field_comments(schema: type) -> dict[str, str]:
    """``{field: its help}`` from the dataclass's source: the comment lines just above the field and
    the comment on its line."""
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    name, line_of_name = None, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if name is not None and tok.start[0] == line_of_name:
                out[name] = " ".join([out[name], text]).strip() if name in out else text
            elif tok.line.strip().startswith("#"):
                above.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name, line_of_name = tok.string, tok.start[0]
            if above:
                out[name] = " ".join(above)
            above = []
        elif tok.type == tokenize.NEWLINE:
            name = None
        elif tok.type == tokenize.NL and not tok.line.strip():
            above = []  # a blank line ends a comment block
    return out


def schema_for(group: str, name: Optional[str]) -> type:
    """The schema of ``group=name`` (a task by its YAML's name or by kind); ``ValueError`` listing the choices."""
    if group in FIXED:
        return FIXED[group]
    if group == "method":
        if name is None:
            raise ValueError(f"which method? valid choices: {sorted(METHODS)}")
        return get_method_class(name).Config
    if group == "task":
        names = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
        if name in TASKS:
            return TASKS[name].Config
        if name in names:
            text = (CONF / "task" / f"{name}.yaml").read_text(encoding="utf-8")
            kind = next((k for k in TASKS if f"/schema/task/{k}@" in text), None)
            if kind is not None:
                return TASKS[kind].Config
        raise ValueError(f"unknown task {name!r}; valid choices: {names} (or a kind: {sorted(TASKS)})")
    raise ValueError(f"unknown config group {group!r}; valid choices: {sorted([*FIXED, 'method', 'task'])}")


def describe(schema: type) -> str:
    """One line per key: ``name: type = default  help``; nested schemas (``decode``) indented under theirs."""
    comments = field_comments(schema)
    defaults = schema_defaults(schema)
    hints = typing.get_type_hints(schema)
    doc = (inspect.getdoc(schema) or "").split("\n")[0]
    lines = [f"{schema.__module__}.{schema.__qualname__}: {doc}".rstrip(": ")]
    for f in fields(schema):
        t = hints.get(f.name, f.type)
        help_ = f"  # {comments[f.name]}" if comments.get(f.name) else ""
        if is_dataclass(t):
            lines.append(f"  {f.name}:{help_}")
            lines += ["  " + ln for ln in describe(t).splitlines()[1:]]
            continue
        typ = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
        default = defaults.get(f.name) if f.default is not MISSING or f.default_factory is not MISSING else "???"
        lines.append(f"  {f.name}: {typ} = {default!r}{help_}")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[0])
        print(f"\ngroups: model, trainer, logger; method: {', '.join(sorted(METHODS))}; "
              f"task: {', '.join(sorted(p.stem for p in (CONF / 'task').glob('*.yaml')))}")
        return 0
    try:
        schema = schema_for(argv[0], argv[1] if len(argv) > 1 else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(schema))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
