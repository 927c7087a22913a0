"""HTTP dates as nginx writes and reads them (ngx_http_time, ngx_parse_http_time).

Writing: `http_date(t)` gives the RFC 1123 form nginx sends in Date, Last-Modified, Expires and
autoindex's json ("Thu, 26 Nov 2026 12:00:00 GMT"). nginx clamps the time to the range its
ngx_gmtime supports (1970 to the end of 9999), so we do too. Every response carries a Date and
most a Last-Modified, so formatted strings are cached per second (the current second in one
slot, older seconds such as file mtimes in a bounded LRU).

Reading: `parse_http_date(s)` accepts exactly what ngx_parse_http_time accepts -- RFC 1123
("Tue, 10 Nov 2002 23:50:13 GMT"), RFC 850 ("Tuesday, 10-Nov-02 23:50:13 GMT") and asctime
("Tue Nov 10 23:50:13 2002") -- with nginx's leniency: the weekday is not checked, the month is
recognised from one to three letters, anything after the seconds (RFC 1123/850) or the year
(asctime) is ignored. nginx's C parser reads past the end of short values into the NUL that
terminates every header value; we pad with NULs to read the same bytes. The arithmetic is done
as nginx does it, in unsigned 64-bit, so even the odd inputs (year 0000, day 00) give nginx's
numbers.

`parse_time(s)` is the same parse returning nginx's raw time_t: -1 (NGX_ERROR) for a value it
rejects. The conditional and range filters compare with that -1 exactly as nginx does.
"""

from __future__ import annotations

import time
from functools import lru_cache

__all__ = ["http_date", "parse_http_date", "parse_time", "clamp_time", "gmtime"]

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# ngx_gmtime supports 4-digit years only: later times become 9999-12-31 23:59:59, earlier
# than the epoch becomes the epoch.
_MAX_TIME = 2932896 * 86400 + 86399


def clamp_time(t: float) -> int:
    """A time as nginx's ngx_gmtime sees it: whole seconds (floor), within 1970..9999."""
    secs = int(t // 1) if not isinstance(t, int) else t
    if secs < 0:
        return 0
    if secs > _MAX_TIME:
        return _MAX_TIME
    return secs


def gmtime(t: float) -> time.struct_time:
    """time.gmtime of the time nginx would format (see clamp_time)."""
    return time.gmtime(clamp_time(t))


@lru_cache(maxsize=4096)
def _format(secs: int) -> str:
    tm = time.gmtime(secs)
    # "%4d" in nginx: years below 1000 are space padded, not zero padded.
    return (
        f"{_WEEKDAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year:4d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} GMT"
    )


_last_secs = -1
_last_text = ""


def http_date(t: float) -> str:
    """nginx's ngx_http_time: 'Thu, 26 Nov 2026 12:00:00 GMT'."""
    global _last_secs, _last_text
    secs = clamp_time(t)
    if secs == _last_secs:
        return _last_text
    text = _format(secs)
    _last_secs, _last_text = secs, text
    return text


# --------------------------------------------------------------------------------------------
# parsing

_NO, _RFC822, _RFC850, _ISOC = 0, 1, 2, 3
_MDAY = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_U64 = 1 << 64
_PAD = b"\0" * 32


def _digit(c: int) -> bool:
    return 48 <= c <= 57


def parse_time(value: str | bytes) -> int:
    """ngx_parse_http_time: seconds since the epoch, or -1 where nginx returns NGX_ERROR."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    n = len(raw)
    # The C code reads up to a few bytes past the value (into the NUL after it).
    b = raw + _PAD
    end = n
    fmt = _NO
    day = 0
    year = 0

    p = 0
    while p < end:
        if b[p] == 0x2C:  # ','
            break
        if b[p] == 0x20:
            fmt = _ISOC
            break
        p += 1

    p += 1
    while p < end and b[p] == 0x20:
        p += 1

    if end - p < 18:
        return -1

    if fmt != _ISOC:
        if not (_digit(b[p]) and _digit(b[p + 1])):
            return -1
        day = (b[p] - 48) * 10 + (b[p + 1] - 48)
        p += 2
        if b[p] == 0x20:
            if end - p < 18:
                return -1
            fmt = _RFC822
        elif b[p] == 0x2D:  # '-'
            fmt = _RFC850
        else:
            return -1
        p += 1

    c = b[p]
    if c == 0x4A:  # J: Jan, Jun, Jul
        month = 0 if b[p + 1] == 0x61 else 5 if b[p + 2] == 0x6E else 6
    elif c == 0x46:  # F
        month = 1
    elif c == 0x4D:  # M: Mar, May
        month = 2 if b[p + 2] == 0x72 else 4
    elif c == 0x41:  # A: Apr, Aug
        month = 3 if b[p + 1] == 0x70 else 7
    elif c == 0x53:  # S
        month = 8
    elif c == 0x4F:  # O
        month = 9
    elif c == 0x4E:  # N
        month = 10
    elif c == 0x44:  # D
        month = 11
    else:
        return -1

    p += 3
    if (fmt == _RFC822 and b[p] != 0x20) or (fmt == _RFC850 and b[p] != 0x2D):
        return -1
    p += 1

    if fmt == _RFC822:
        if not all(_digit(b[p + i]) for i in range(4)):
            return -1
        year = int(b[p : p + 4])
        p += 4
    elif fmt == _RFC850:
        if not (_digit(b[p]) and _digit(b[p + 1])):
            return -1
        year = (b[p] - 48) * 10 + (b[p + 1] - 48)
        year += 2000 if year < 70 else 1900
        p += 2

    if fmt == _ISOC:
        if b[p] == 0x20:
            p += 1
        if not _digit(b[p]):
            return -1
        day = b[p] - 48
        p += 1
        if b[p] != 0x20:
            if not _digit(b[p]):
                return -1
            day = day * 10 + (b[p] - 48)
            p += 1
        if end - p < 14:
            return -1

    if b[p] != 0x20:
        return -1
    p += 1

    if not (_digit(b[p]) and _digit(b[p + 1])):
        return -1
    hour = (b[p] - 48) * 10 + (b[p + 1] - 48)
    p += 2
    if b[p] != 0x3A:
        return -1
    p += 1
    if not (_digit(b[p]) and _digit(b[p + 1])):
        return -1
    minute = (b[p] - 48) * 10 + (b[p + 1] - 48)
    p += 2
    if b[p] != 0x3A:
        return -1
    p += 1
    if not (_digit(b[p]) and _digit(b[p + 1])):
        return -1
    sec = (b[p] - 48) * 10 + (b[p + 1] - 48)

    if fmt == _ISOC:
        p += 2
        if b[p] != 0x20:
            return -1
        p += 1
        if not all(_digit(b[p + i]) for i in range(4)):
            return -1
        year = int(b[p : p + 4])

    if hour > 23 or minute > 59 or sec > 59:
        return -1

    if day == 29 and month == 1:
        if (year & 3) or (year % 100 == 0 and year % 400 != 0):
            return -1
    elif day > _MDAY[month]:
        return -1

    # Gauss' formula with the year starting on March 1, as nginx computes it: year and day
    # are unsigned (ngx_uint_t), so year 0 in January/February wraps around.
    month -= 1
    if month <= 0:
        month += 12
        year = (year - 1) % _U64
    days = (
        365 * year
        + year // 4
        - year // 100
        + year // 400
        + (367 * month // 12 - 30)
        + day
        - 1
        - 719527
        + 31
        + 28
    ) % _U64
    t = (days * 86400 + hour * 3600 + minute * 60 + sec) % _U64
    return t - _U64 if t >= 1 << 63 else t


def parse_http_date(s: str | bytes) -> float | None:
    """An HTTP date as nginx reads it (seconds since the epoch), or None if nginx rejects it.

    A date that nginx computes as -1 (1969-12-31 23:59:59) is indistinguishable from an error
    in nginx, and is reported as None here too.
    """
    t = parse_time(s)
    return None if t == -1 else float(t)
