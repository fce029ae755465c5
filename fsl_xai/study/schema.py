"""Reading and checking study files: a bounded, alias-free YAML/JSON reader and field checks whose
messages name the field (``questions[1] 'confidence'.scale``) and say how to fix it.

YAML aliases (``*name``) are refused outright: a study file never needs them, and a few lines of
nested aliases (an "alias bomb") would otherwise expand to gigabytes. With aliases gone, what a
file holds is bounded by its size, which is capped at ``MAX_STUDY_FILE_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import FslXaiError

MAX_STUDY_FILE_BYTES = 1 << 20  # 1 MiB: room for tens of thousands of case ids


class StudyDesignError(FslXaiError, ValueError):
    """A study file is invalid; the message names the field and how to fix it."""


# ---------------------------------------------------------------------------------------- reading
def _yaml_loader(path: Path) -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses aliases and repeated keys."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise StudyDesignError(
                    f"{path}, line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed in a "
                    "study file; write the value out in full")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise StudyDesignError(f"{path}, line {key_node.start_mark.line + 1}: the field {key!r} is given "
                                           "twice; keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _refuse_repeated_json_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise StudyDesignError(f"{path}: the field {key!r} is given twice; keep one")
            out[key] = value
        return out

    return pairs_to_dict


def read_study_file(path: str | Path) -> Any:
    """The parsed content of a YAML or JSON study file (``.json``: JSON, anything else: YAML).

    Raises:
        StudyDesignError: the file is missing, not a file, larger than MAX_STUDY_FILE_BYTES, not
            UTF-8, not valid YAML/JSON, uses YAML aliases, repeats a key or nests too deeply.
    """
    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STUDY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise StudyDesignError(f"study file not found: {path}") from None
    except IsADirectoryError:
        raise StudyDesignError(f"{path} is a folder; give the study file (YAML or JSON) itself") from None
    except OSError as exc:
        raise StudyDesignError(f"cannot read the study file {path}: {exc.strerror}") from None
    if len(raw) > MAX_STUDY_FILE_BYTES:
        raise StudyDesignError(f"{path} is larger than {MAX_STUDY_FILE_BYTES // 1024} KiB, too large for a study file; "
                               "give cases as {n: N, seed: S} or a shorter list of sample ids")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyDesignError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        if kind == "JSON":
            return json.loads(text, object_pairs_hook=_refuse_repeated_json_keys(path))
        import yaml

        return yaml.load(text, Loader=_yaml_loader(path))  # a SafeLoader: builds plain data only
    except StudyDesignError:
        raise
    except RecursionError:
        raise StudyDesignError(f"{path}: nested too deeply to be a study file; check the brackets") from None
    except Exception as exc:  # the parsers raise many types; all mean "not valid syntax"
        message = " ".join(str(exc).split())
        raise StudyDesignError(f"{path}: not valid {kind}: {message}") from None


# ---------------------------------------------------------------------------------------- fields
def _shown(value: Any) -> str:
    """A value as a message shows it, with its kind where the kind is the problem."""
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "a mapping"}
    text = repr(value) if not isinstance(value, (list, dict)) else json.dumps(value, default=str)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = kinds.get(type(value), type(value).__name__) if value is not None else "empty"
    return f"{text} ({kind})"


def _names(options: Sequence[str]) -> str:
    quoted = [repr(o) for o in options]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_mapping(value: Any, where: str, fields: dict[str, bool], example: str) -> dict[str, Any]:
    """A mapping with only known fields and every required one (``fields``: name -> required)."""
    if not isinstance(value, dict):
        raise StudyDesignError(f"{where} must be a mapping such as {example}, got {_shown(value)}")
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise StudyDesignError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
    for name, required in fields.items():
        if required and name not in value:
            raise StudyDesignError(f"{where}: missing field {name!r}; write it as in {example}")
    return value


def check_text(value: Any, where: str, example: str) -> str:
    """A non-empty text."""
    if not isinstance(value, str) or not value.strip():
        raise StudyDesignError(f"{where} must be a non-empty text, got {_shown(value)}; write e.g. {example}")
    return value


def check_whole(value: Any, where: str, low: int | None = None, high: int | None = None,
                example: str = "") -> int:
    """A whole number in [low, high] (true/false and 3.0 are refused)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and ((low is not None and value < low) or (high is not None and value > high)):
        ok = False
    if not ok:
        if low == 1 and high is None:
            wanted = "a positive integer (1 or more)"
        elif low is not None and high is not None:
            wanted = f"a whole number from {low} to {high}"
        elif low is not None:
            wanted = f"a whole number of at least {low}"
        else:
            wanted = "a whole number"
        hint = f"; write e.g. {example}" if example else ""
        raise StudyDesignError(f"{where} must be {wanted}, got {_shown(value)}{hint}")
    return value


def check_flag(value: Any, where: str) -> bool:
    """true or false (text such as "no" is refused: it would read as true)."""
    if not isinstance(value, bool):
        raise StudyDesignError(f"{where} must be true or false, got {_shown(value)}")
    return value


def check_fraction(value: Any, where: str, example: str) -> float:
    """A number strictly between 0 and 1 (true/false and text are refused)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    if not ok:
        raise StudyDesignError(f"{where} must be a number strictly between 0 and 1, got {_shown(value)}; "
                               f"write e.g. {example}")
    return float(value)


def check_choice(value: Any, where: str, options: Sequence[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise StudyDesignError(f"{where} must be {_names(options)}, got {_shown(value)}")
    return value


def check_list(value: Any, where: str, example: str, allow_empty: bool = False) -> list[Any]:
    """A list (a single text is refused rather than read as a list of letters)."""
    if not isinstance(value, list):
        got = f"the text {value!r}" if isinstance(value, str) else _shown(value)
        raise StudyDesignError(f"{where} must be a list such as {example}, got {got}")
    if not value and not allow_empty:
        raise StudyDesignError(f"{where}: the list is empty; give at least one, e.g. {example}")
    return value


def check_names(value: Any, where: str, example: str) -> tuple[str, ...]:
    """A non-empty list of distinct non-empty texts."""
    names = tuple(check_text(v, f"{where}[{i}]", example) for i, v in enumerate(check_list(value, where, example)))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyDesignError(f"{where}: {repeated} given more than once; list each once")
    return names
