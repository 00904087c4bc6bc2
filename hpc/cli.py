"""The one command-line dialect of the suite: parser, error class, error line and exit status.

Every command (``holstein_dist.generate``, ``.train``, ``.evaluate``, ``hpc.submit``) reads::

    python -m <command> [--config FILE] [--flag VALUE ...] [KEY=VALUE ...]

Flags for what a person types often (``--config``, ``--data``, ``--checkpoint``, ``--out``, ``--workers``,
...); ``KEY=VALUE`` (dotted for nested fields) for any field of the command's config; a flag that names a
config field is the same setting as its ``KEY=VALUE`` (``--max-lag 50`` = ``max_lag=50``). Options may come
before or after the overrides.

Bad input (a config, flag, path, data set or checkpoint that cannot work) is a :class:`UserError`. The
command then prints ONE line, ``error: <what is wrong>; <how to fix it>``, on stderr and exits with status
2, before it writes anything. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2
"""Exit status for bad input (argparse's own choice for a bad command line, kept for every kind of input)."""
ERROR_PREFIX = "error: "


class UserError(ValueError):
    """The user's input cannot work; the message is one line that names the problem and the fix.

    A ValueError, so that code which validates values (dataclass ``__post_init__``, readers) keeps raising
    plain ValueErrors and the commands decide where those count as bad input (:func:`bad_input`).
    Subclasses exist only where a caller must tell the cases apart (e.g. a corrupt checkpoint that resume
    may skip).
    """


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the suite's error line: a bad command line raises :class:`UserError` instead of printing
    the usage block and ``prog: error:`` (argparse's own format), so it is reported like any other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")

    def parse(self, argv: Any = None) -> argparse.Namespace:
        # Intermixed: ``--out DIR`` may follow the KEY=VALUE overrides, as people type them.
        return self.parse_intermixed_args(argv)


def command_parser(prog: str, description: str, *, config_help: str, config_required: bool = True,
                   override_example: str = "splits.train=8") -> ArgumentParser:
    """A parser with the two arguments every command shares: ``--config FILE`` and ``KEY=VALUE...``."""
    p = ArgumentParser(prog=prog, description=description,
                       epilog="KEY=VALUE sets any config field (dotted for nested ones); a flag that names a field "
                              "sets the same field. Bad input: one line 'error: ...' on stderr, exit status 2.")
    p.add_argument("--config", required=config_required, metavar="FILE", help=config_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {override_example}")
    return p


def field_flags(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """``{field: value}`` for the config fields among ``fields`` that the user set by a flag (flags meant for
    fields have ``dest=<field>`` and ``default=argparse.SUPPRESS``, so an absent flag leaves no attribute)."""
    given = vars(args)
    return {name: given[name] for name in fields if name in given}


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """Inside, a ValueError is about the user's input (the checks run before any work): make it a UserError.

    Readers and validators raise plain ValueErrors with one-line messages; only the command knows that,
    at this point, such an error means "fix your input" rather than a bug.
    """
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(str(exc)) from None


def one_line(exc: BaseException) -> str:
    """The error's line. An error raised in a DataLoader worker arrives with the worker's traceback in its
    message; our line is its last one."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def report_error(exc: BaseException, *, show: bool = True) -> int:
    """Print ``error: <line>`` (unless ``show`` is False: e.g. MPI ranks other than the coordinator) and return
    the exit status for bad input."""
    if show:
        print(f"{ERROR_PREFIX}{one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def flag_field(text: str, default: Any = dataclasses.MISSING) -> Any:
    """A config dataclass field that also gets a command-line flag (``--max-lag`` for ``max_lag``); the
    field's type, default and this help are the flag's: the dataclass is the one definition of both."""
    return dataclasses.field(default=default, metadata={"flag": text})


def add_field_flags(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Declare the flags of ``cls``'s :func:`flag_field` fields; return those field names.

    Flags default to "not given" (argparse.SUPPRESS), so that only what the user typed overrides the
    ``--config`` file; :func:`field_flags` collects them.
    """
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if "flag" not in f.metadata:
            continue
        text = f.metadata["flag"]
        if f.default not in (None, False, dataclasses.MISSING):
            text += f" (default: {f.default})"
        # argparse %-formats help strings; a field's text is plain prose ("~90 % of ..."), so escape it.
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        tp = hints[f.name]
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            base = tp
            if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None -> X
                base = next(a for a in typing.get_args(tp) if a is not type(None))
            if typing.get_origin(base) is typing.Literal:
                kwargs["choices"] = typing.get_args(base)
            else:
                kwargs["type"] = base
                kwargs["metavar"] = {int: "N", float: "X"}.get(base, "PATH" if base is Path else "NAME")
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
        names.append(f.name)
    return names
