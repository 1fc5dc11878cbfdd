"""Kubernetes resource quantities ("500m", "8Gi", "1e3", 4) as exact numbers, and back to the API's strings."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SUFFIX: dict[str, int | Fraction] = {
    "": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class InvalidQuantity(ValueError):
    """A value the API server would refuse as a resource quantity."""


def parse(value: str | int | float) -> Fraction:
    """Return a quantity's exact value in base units (cores, bytes, devices)."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise InvalidQuantity(f"quantities must match the regular expression "
                              f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    return Fraction(match.group(1)) * _SUFFIX[match.group(2) or ""]


def amount(resource: str, value: str | int | float) -> int:
    """Return a quantity as the scheduler counts it: CPU in millicores, everything else in whole units."""
    exact = parse(value)
    return math.ceil(exact * 1000) if resource == "cpu" else math.ceil(exact)


def render(resource: str, counted: int) -> str:
    """Return the API's spelling of a counted amount (``amount``'s inverse): "3920m", "15759872Ki", "58"."""
    if resource == "cpu":
        return str(counted // 1000) if counted % 1000 == 0 else f"{counted}m"
    if resource in {"memory", "ephemeral-storage"} and counted % 1024 == 0:
        return f"{counted // 1024}Ki"
    return str(counted)
