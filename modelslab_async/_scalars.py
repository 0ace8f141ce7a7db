"""How the API writes scalars, read leniently: yes/no words, numbers as strings, loose ids.

Each reader takes one JSON value and returns the typed value or raises ``ValueError``. The
converter (``_convert``) registers them as its hooks; the error map (``_error_map``) reads
``retry_after`` and job ids with them.
"""

from __future__ import annotations

from typing import Any

from ._errors import JobId

#: The API's yes/no words (matched after strip() and lower()) and what they mean.
BOOL_WORDS: dict[str, bool] = dict.fromkeys(("yes", "true", "1", "y", "on"), True) | dict.fromkeys(
    ("no", "false", "0", "n", "off", "none", ""), False
)


def to_bool(value: Any, _: Any = None) -> bool:
    """``True``/``False``, a yes/no word in any case, or the numbers 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = BOOL_WORDS.get(value.strip().lower())
        if word is not None:
            return word
    elif isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"not a yes/no value: {value!r}")


def to_opt_bool(value: Any, _: Any = None) -> bool | None:
    """:func:`to_bool`, with None for null and for anything it cannot read (``meta`` only)."""
    if value is None:
        return None
    try:
        return to_bool(value)
    except ValueError:
        return None


def to_int(value: Any, _: Any = None) -> int:
    """An int, an integral float (``7.0``) or a string of either (``" 512 "``, ``"7.0"``)."""
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if number.is_integer():
                return int(number)
    raise ValueError(f"not an integer: {value!r}")


def to_opt_int(value: Any, _: Any = None) -> int | None:
    """:func:`to_int`, with None for null and ``""``."""
    return None if value is None or value == "" else to_int(value)


def to_float(value: Any, _: Any = None) -> float:
    """A number or a string of one (not a bool)."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"not a number: {value!r}")


def to_opt_float(value: Any, _: Any = None) -> float | None:
    """:func:`to_float`, with None for null and ``""``."""
    return None if value is None or value == "" else to_float(value)


def to_str(value: Any, _: Any = None) -> str:
    """A string as is; anything else as its ``str()``."""
    return value if isinstance(value, str) else str(value)


def to_opt_str(value: Any, _: Any = None) -> str | None:
    """A string, a number as its text, or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"not a string: {value!r}")


def to_job_id(value: Any, _: Any = None) -> JobId | None:
    """Ids arrive as int, digit string (read as an int), other string, ``""`` or null."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not an id: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isdigit() else text
    raise ValueError(f"not an id: {value!r}")


def to_job_id_or_none(value: Any) -> JobId | None:
    """:func:`to_job_id`, with None for what it cannot read (error answers)."""
    try:
        return to_job_id(value)
    except ValueError:
        return None


def to_links(value: Any, _: Any = None) -> tuple[str, ...]:
    """``output``/``future_links``: a list of URLs, ``""``, null, or a single URL string.

    Empty and non-string entries of a list are dropped.
    """
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str) and v)
    raise ValueError(f"not a list of URLs: {value!r}")


__all__ = [
    "BOOL_WORDS",
    "to_bool",
    "to_float",
    "to_int",
    "to_job_id",
    "to_job_id_or_none",
    "to_links",
    "to_opt_bool",
    "to_opt_float",
    "to_opt_int",
    "to_opt_str",
    "to_str",
]
