"""Command-line options generated from a config dataclass, so each default is written once.

A command declares ``ConfigOptions(HarvestConfig, flags=..., exclude=...)``; every field of the
config not in ``exclude`` becomes an option of the command's parser:

- the flag name from the field name (``max_seq_len`` -> ``--max-seq-len``);
- the type from the annotation: ``int``, ``float``, ``str``, ``X | None``, ``int | str``
  (:func:`int_or_str`), a ``Literal`` (its values are the choices); a ``bool`` field is a flag
  that switches away from its default (``--trust-remote-code`` for a False default,
  ``--no-progress`` for a True one);
- the default from the field's default (a field without one is a required option);
- the help from the field's docstring, the string literal right after the field in the class
  body (:func:`field_docs`), with the default appended (:func:`default_text`).

What a command's option does differently on purpose (its own name such as ``--quiet`` for
``progress``, a parser such as ``parse_count``, narrower choices, a positional, a shorter
help, a metavar) is a :class:`Flag` in ``flags``; a field a command does not offer is in
``exclude`` with the reason, and a field of a type with no command-line form must be one or
the other, so a field added to a config either gets its option or a documented reason for
having none.
:meth:`ConfigOptions.build` makes the config back from the parsed namespace. A command that
spreads one config over several argument groups (``crossdiff steer``) adds each group's fields
with ``add_to(group, fields)``.

Why not the ``simple-parsing`` library (tried: 0.1.9, the current release): it reads the same
field docstrings, but it cannot reproduce this CLI's options. Its booleans take a value
(``--trust-remote-code bool``) and add ``--notrust-remote-code``; a renamed flag, a custom
parser or narrower choices must be declared in the config class itself (``simple_parsing.field``),
tying every library config to the CLI library; it cannot tell an option that was not given
from its default (``crossdiff train`` passes only the settings given, so that ``--seeds``
members keep the reference's); it puts the config in one namespace attribute and its own help
layout on every subcommand. This generator is the part we need, in the standard library.

The configs live in packages that import torch, and ``crossdiff --help`` should not: a
command's parser is a :class:`CommandParser`, which adds the options deferred with
:func:`defer` only when that command is parsed or its help shown.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

_Container = argparse.ArgumentParser | argparse._ArgumentGroup


# ---- a command's parser, filled on first use ---------------------------------------------------
class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose deferred option builders run on first parse or help, so that
    building the whole CLI imports no config package (and no torch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[], None]] = []

    def defer(self, add: Callable[[], None]) -> None:
        self._deferred.append(add)

    def populate(self) -> None:
        """Run the deferred builders (once); tests call it to inspect the options."""
        while self._deferred:
            self._deferred.pop(0)()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()

    def format_help(self) -> str:
        self.populate()
        return super().format_help()


def defer(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """``add(parser)`` when the command is first parsed (a :class:`CommandParser`), else now."""
    if isinstance(parser, CommandParser):
        parser.defer(lambda: add(parser))
    else:
        add(parser)


# ---- field docstrings --------------------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a class and its bases: the string literal right after each
    annotated field in the class body, as written (indentation removed). Empty where the source
    cannot be read (then the options have no help, and nothing else changes)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _terminal(text: str) -> str:
    """A docstring as one line of help: reST roles and double backquotes become `x`."""
    text = re.sub(r":\w+:`([^`]*)`", r"`\1`", text)
    return " ".join(text.replace("``", "`").split())


def default_text(value: Any) -> str:
    """A default as the help shows it: a list or tuple as its items comma-separated, the way
    such an option is typed (``-4.0,-2.0,0.0``), anything else as ``str``."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


# ---- types -------------------------------------------------------------------------------------
def int_or_str(text: str) -> int | str:
    """The parser of an ``int | str`` field: ``"12"`` and ``"-1"`` -> int; ``"middle"`` and
    ``"75%"`` stay."""
    try:
        return int(text)
    except ValueError:
        return text


def _parser_of(hint: Any) -> tuple[Callable[[str], Any], tuple[Any, ...] | None] | None:
    """(type, choices) for a non-bool annotation, or None when it has no command-line form."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = tuple(a for a in get_args(hint) if a is not type(None))
        if set(args) == {int, str}:
            return int_or_str, None
        return _parser_of(args[0]) if len(args) == 1 and args[0] is not bool else None
    if origin is Literal:
        values = get_args(hint)
        kinds = {type(v) for v in values}
        return (kinds.pop(), values) if len(kinds) == 1 and bool not in kinds else None
    if hint in (int, float, str):
        return hint, None
    return None


# ---- one config's options ----------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """How one field's option differs, on purpose, from what its type and docstring give."""

    name: str | None = None
    """The option string (``--quiet`` for ``progress``); with ``positional``, the metavar."""
    type: Callable[[str], Any] | None = None
    """Parser of the text (``parse_count``); argparse reports the value when it raises
    ``ArgumentTypeError``/``ValueError``. Given, the annotation is not consulted."""
    choices: tuple[Any, ...] | None = None
    """Allowed values, when the command offers fewer than the config accepts."""
    help: str | None = None
    """Help instead of the field's docstring (the default is still appended)."""
    positional: bool = False
    """A positional argument (optional, ``nargs='?'``, when the field has a default)."""
    nargs: str | int | None = None
    """argparse's ``nargs`` (``"+"``: the value is a list of parsed texts, and ``convert``
    gets that list, or the field's default when not given)."""
    metavar: str | None = None
    """The value's name in the usage and help (``--clamp VALUE``), instead of the flag's."""
    convert: Callable[[Any], Any] | None = None
    """Applied, when the config is built, to the option's value (the parsed one, or the
    default when not given) unless it is None: ``--k-anneal-from 0`` -> None, or a check that
    raises CrossdiffError, so the CLI exits 2 with its message."""


class ConfigOptions:
    """The options of one config dataclass on one command (see the module docstring).

    ``flags``: ``{field: Flag}``, what differs on purpose. ``exclude``: ``{field: why the
    command has no option}``. ``given_only``: no option is required, options default to None
    and :meth:`values` holds only those given (for a command whose defaults come from
    elsewhere: a preset, the store, a reference crosscoder); the help still names the config's
    defaults.
    """

    def __init__(
        self,
        config: type,
        *,
        flags: Mapping[str, Flag] | None = None,
        exclude: Mapping[str, str] | None = None,
        given_only: bool = False,
    ) -> None:
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{config!r} is not a dataclass")
        self.config_class = config
        self.flags: dict[str, Flag] = dict(flags or {})
        self.exclude: dict[str, str] = dict(exclude or {})
        self.given_only = given_only
        names = {f.name for f in dataclasses.fields(config)}
        for what, keys in (("flags", self.flags), ("exclude", self.exclude)):
            unknown = sorted(set(keys) - names)
            if unknown:
                raise ValueError(
                    f"{what} names no field of {config.__name__}: {', '.join(unknown)}"
                )
        both = sorted(set(self.flags) & set(self.exclude))
        if both:
            raise ValueError(f"{config.__name__} fields both flagged and excluded: {both}")

    def fields(self) -> list[dataclasses.Field]:
        """The config's fields that are options, in class order."""
        return [f for f in dataclasses.fields(self.config_class) if f.name not in self.exclude]

    def default(self, f: dataclasses.Field) -> Any:
        """The field's default (MISSING when it has none)."""
        if f.default is not MISSING:
            return f.default
        if f.default_factory is not MISSING:
            return f.default_factory()
        return MISSING

    def add_to(self, container: _Container, fields: Sequence[str] | None = None) -> None:
        """Add one option per field to a parser or argument group: every field, or only
        ``fields``, in that order (a command that spreads one config over several argument
        groups adds each group's; a field added twice is an error)."""
        cls = self.config_class
        hints = get_type_hints(cls)
        taken = {a.dest for a in container._actions}
        chosen = self.fields()
        if fields is not None:
            by_name = {f.name: f for f in chosen}
            unknown = [name for name in fields if name not in by_name]
            if unknown:
                raise ValueError(f"{cls.__name__} has no option {unknown} (no field, or excluded)")
            chosen = [by_name[name] for name in fields]
        for f in chosen:
            if f.name in taken:
                raise ValueError(f"{cls.__name__}.{f.name}: the parser already has that option")
            args, kwargs = self._argument(f, hints[f.name], self.flags.get(f.name) or Flag())
            container.add_argument(*args, **kwargs)

    def _argument(
        self, f: dataclasses.Field, hint: Any, flag: Flag
    ) -> tuple[list[str], dict[str, Any]]:
        cls = self.config_class
        default = self.default(f)
        dash = f.name.replace("_", "-")
        kwargs: dict[str, Any] = {}
        inverted = False
        if hint is bool and flag.type is None:
            inverted = default is True
            kwargs["action"] = "store_false" if inverted else "store_true"
            name = flag.name or (f"--no-{dash}" if inverted else f"--{dash}")
        else:
            parser = (flag.type, flag.choices) if flag.type else _parser_of(hint)
            if parser is None:
                raise TypeError(
                    f"{cls.__name__}.{f.name}: type {hint} has no command-line form; give it "
                    f"a Flag(type=...) or exclude it with the reason"
                )
            kwargs["type"] = parser[0]
            choices = flag.choices if flag.choices is not None else parser[1]
            if choices is not None:
                kwargs["choices"] = choices
            name = flag.name or f"--{dash}"
            if flag.name and choices is None:  # named as the flag, not the field
                kwargs["metavar"] = flag.name.lstrip("-").replace("-", "_").upper()
            if flag.metavar is not None:
                kwargs["metavar"] = flag.metavar
        required = default is MISSING and not self.given_only
        if flag.positional:
            args = [f.name]
            kwargs["metavar"] = flag.name
            if not required and flag.nargs is None:
                kwargs["nargs"] = "?"
        else:
            args = [name]
            kwargs["dest"] = f.name
            kwargs["required"] = required
        if flag.nargs is not None:
            kwargs["nargs"] = flag.nargs
        if not required:
            kwargs["default"] = None if self.given_only else default
        help_text = flag.help if flag.help is not None else field_docs(cls).get(f.name, "")
        help_text = _terminal(help_text)
        if inverted and flag.help is None and help_text:
            lower = help_text[:1].lower() if help_text[1:2].islower() else help_text[:1]
            help_text = f"turn off: {lower}{help_text[1:]}"
        if default not in (MISSING, None) and hint is not bool:
            help_text = f"{help_text} (default: {default_text(default)})".strip()
        kwargs["help"] = help_text.replace("%", "%%") or None
        return args, kwargs

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """``{field: value}`` from the parsed namespace (with ``given_only``, those given)."""
        out: dict[str, Any] = {}
        for f in self.fields():
            value = getattr(args, f.name)
            if value is None and self.given_only:
                continue
            convert = self.flags[f.name].convert if f.name in self.flags else None
            out[f.name] = convert(value) if convert is not None and value is not None else value
        return out

    def build(self, args: argparse.Namespace) -> Any:
        """The config, from the parsed namespace."""
        return self.config_class(**self.values(args))
