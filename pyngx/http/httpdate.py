"""TEMPORARY stand-in (replaced by the h-static branch)."""

from __future__ import annotations

from email.utils import formatdate, parsedate_to_datetime


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def parse_http_date(s: str) -> float | None:
    try:
        return parsedate_to_datetime(s).timestamp()
    except (TypeError, ValueError):
        return None
