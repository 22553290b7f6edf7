"""Epsilon budgets as people write them: ``8/255``, ``0.031``, ``0.3`` (always pixel units).

One home for reading and writing eps, shared by the dataset registry, the report and the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from dmlcli.errors import DmlError


def parse_eps(text: str | float) -> float:
    """``'8/255'``, ``'0.031'`` or ``'0.3'`` -> a pixel-unit epsilon in [0, 1].

    Examples:
        >>> parse_eps("8/255") == 8 / 255
        True
        >>> parse_eps(0.3)
        0.3
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
        shown = repr(text)
    else:
        shown = str(text)
        try:
            s = shown.strip()
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise DmlError(f"cannot read eps {shown!r}; write e.g. 8/255 or 0.031") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise DmlError(f"eps {shown!r} is outside [0, 1] (eps is in pixel units)")
    return value


def parse_eps_list(texts: Sequence[str | float]) -> list[float]:
    """Several eps (:func:`parse_eps`), each once: the same ball written twice (``0.1`` and
    ``1/10``, or values within 1e-9) would be two results that compare as one, so it is
    refused in one line.

    Examples:
        >>> parse_eps_list(["8/255", "0.1"]) == [8 / 255, 0.1]
        True
    """
    values: list[float] = []
    for text in texts:
        value = parse_eps(text)
        same = [i for i, v in enumerate(values) if abs(v - value) < 1e-9]
        if same:
            raise DmlError(
                f"eps {texts[same[0]]!r} and {text!r} are the same budget: give each eps once"
            )
        values.append(value)
    return values


def format_eps(eps: float) -> str:
    """``0.0313...`` -> ``'8/255'`` where it is one, else a short decimal (``'0.3'``)."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


def eps_text(eps: float) -> str:
    """An eps as the paper writes it: short decimals stay decimals (``0.2``, ``0.015``),
    anything else is ``k/255`` where it is one (``8/255``)."""
    if eps > 0 and abs(round(eps, 3) - eps) < 1e-12:
        return f"{eps:g}"
    return format_eps(eps)
