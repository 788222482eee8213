"""Personal data replaced by typed placeholders: <EMAIL>, <PHONE>, <ID_CN>, <IP>, <CARD>.

Each kind is a pattern plus a check that the match really is one, so that numbers which only
look alike stay: Chinese resident IDs need a valid birth date and the ISO 7064 MOD 11-2 check
character, bank cards a card-network prefix and the Luhn checksum, IPv4/IPv6 a valid address
that is globally routed (loopback, private, link-local and documentation ranges are no one's
personal data and fill technical manuals; so are multicast groups), phone numbers a Chinese mobile or landline shape or
an explicit international "+" prefix. An IPv4-looking number right after "version" (v, ver.,
release, kernel, 版本, 内核) or "section" (§, 第, 节) is a version or section number and stays, as
does one shaped like a version (`looks_like_version`: 2.6.22.16, 12.2.0.1, 19.3.0.0), and so do
dates, timestamps, hex constants, UUIDs and ISBNs. An international number needs an assigned
country code (+1 then ten digits).
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from datetime import date

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "id_cn": "<ID_CN>", "ip": "<IP>", "card": "<CARD>"}

# No letter, digit, or joining punctuation right before / after: a match is a whole token.
_B = r"(?<![0-9A-Za-z_.\-+/@])"
_E = r"(?![0-9A-Za-z_@]|[.\-/][0-9A-Za-z])"
EMAIL_RE = re.compile(r"(?<![0-9A-Za-z_.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![0-9A-Za-z_\-])")
ID_CN_RE = re.compile(_B + r"[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]" + _E)
CARD_RE = re.compile(_B + r"(?:[2-6]\d{3}(?:[ \-]?\d{4}){2}(?:[ \-]?\d{1,7})|3[47]\d{2}[ \-]?\d{6}[ \-]?\d{5})" + _E)
PHONE_RE = re.compile(
    r"(?:\+|(?<![0-9A-Za-z_.\-/])00)(?:86[ \-]?)?1[3-9]\d[ \-]?\d{4}[ \-]?\d{4}" + _E  # CN mobile with country code
    + r"|(?<![0-9A-Za-z_.\-+/])1[3-9]\d(?:\d{8}|[ \-]\d{4}[ \-]\d{4})" + _E           # CN mobile
    + r"|(?<![0-9A-Za-z_.\-+/])(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3}-)[ ]?[2-9]\d{2,3}[ \-]?\d{4}" + _E  # CN landline
    + r"|\+[1-9]\d{0,2}(?:[ \-]?\(\d{1,4}\))?(?:[ \-]?\d{1,6}+){2,5}+" + _E)         # international, +CC
# (possessive groups: a long digit run after "+" fails at once instead of trying every split)
IPV4_RE = re.compile(r"(?<![0-9A-Za-z_.\-])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)"
                     r"(?![0-9A-Za-z_\-]|\.\d)")
IPV6_RE = re.compile(r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|\d+\.\d+\.\d+\.\d+)"
                     r"(?![0-9A-Za-z_:])")
# What makes an IPv4-looking number something else: a version or section before it, a heading
# number ("1.3.2.1. Title" at the start of a line), a Chinese section reference (第 1.3.2.3 节).
NOT_IP_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\bv|\brelease|\bkernel|\bsection|\bsect?\.?|§|版本号?|版|内核|"
                              r"第|[节節章条條])[\s:：=]*$"
                              r"|(?:^|\n)[ \t]*$", re.I)
NOT_IP_AFTER_RE = re.compile(r"\.?\s*[节章条]")
MAY_HOLD_PII_RE = re.compile(r"[0-9@]")
UNASSIGNED_CC = {"28", "83", "89"}   # the only two-digit starts no country code has (besides 0x)
ID_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]
ID_CHECK = "10X98765432"


def id_cn_valid(number: str) -> bool:
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], ID_WEIGHTS))
    return ID_CHECK[total % 11] == number[17].upper()


def looks_like_version(parts: list[int]) -> bool:
    """2.6.22.16, 3.1.4.1 (first two parts below 10), 12.2.0.1, 11.0.20.1 (first part below 30, a
    zero in the middle), 19.3.0.0 (ending in 0: a network, not a host): read as version numbers.
    1.1.1.1 and 8.8.8.8 are public resolvers, not anyone's address."""
    first, second, third, last = parts
    return (first < 10 and second < 10) or last == 0 or (first < 30 and 0 in (second, third))


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_valid(number: str) -> bool:
    digits = re.sub(r"[ \-]", "", number)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def phone_valid(number: str) -> bool:
    digits = re.sub(r"\D", "", number)
    if not (7 <= len(digits) <= 15 and len(set(digits)) > 2):
        return False
    return not number.startswith("+") or country_code_valid(digits)


def country_code_valid(digits: str) -> bool:
    """The digits after "+" start with an assigned ITU country code; +1 (North America) is
    followed by exactly ten digits, the first 2-9."""
    if digits[0] == "1":
        return len(digits) == 11 and digits[1] in "23456789"
    return digits[:2] not in UNASSIGNED_CC


class PiiScrubber:
    """`scrub(text) -> (text, Counter of replacements per kind)`."""

    def __init__(self, kinds: list[str], keep_private_ip: bool = True):
        self.kinds = [k for k in ("email", "id_cn", "card", "ip", "phone") if k in kinds]
        self.keep_private_ip = keep_private_ip

    def scrub(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        if not MAY_HOLD_PII_RE.search(text):   # every kind needs a digit or an @
            return text, counts
        for kind in self.kinds:
            text = getattr(self, f"_{kind}")(text, counts)
        return text, counts

    def _sub(self, pattern: re.Pattern, kind: str, text: str, counts: Counter, valid) -> str:
        def replace(match: re.Match) -> str:
            if not valid(match):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]
        return pattern.sub(replace, text)

    def _email(self, text: str, counts: Counter) -> str:
        return self._sub(EMAIL_RE, "email", text, counts, lambda m: True) if "@" in text else text

    def _id_cn(self, text: str, counts: Counter) -> str:
        return self._sub(ID_CN_RE, "id_cn", text, counts, lambda m: id_cn_valid(m.group()))

    def _card(self, text: str, counts: Counter) -> str:
        return self._sub(CARD_RE, "card", text, counts, lambda m: card_valid(m.group()))

    def _phone(self, text: str, counts: Counter) -> str:
        return self._sub(PHONE_RE, "phone", text, counts, lambda m: phone_valid(m.group()))

    def _ip(self, text: str, counts: Counter) -> str:
        text = self._sub(IPV4_RE, "ip", text, counts, self._ipv4_valid)
        return self._sub(IPV6_RE, "ip", text, counts, self._ipv6_valid) if "::" in text or text.count(":") >= 7 \
            else text

    def _ipv4_valid(self, match: re.Match) -> bool:
        text, start, end = match.string, match.start(), match.end()
        before = NOT_IP_BEFORE_RE.search(text[max(0, start - 12):start])
        if before and (before.group().strip(" \t\n") or text[end:end + 1] == "."):   # heading: "1.2.3.4. "
            return False
        if NOT_IP_AFTER_RE.match(text, end, end + 4):
            return False
        if looks_like_version([int(p) for p in match.group().split(".")]):
            return False
        return self._reportable(ipaddress.IPv4Address(match.group()))

    def _ipv6_valid(self, match: re.Match) -> bool:
        candidate = match.group()
        groups = candidate.split(":")
        if sum(1 for g in groups if g) < 3:   # "a::b", C++ "::", times
            return False
        if "::" not in candidate and all(len(g) <= 2 for g in groups):   # MAC / EUI-64 bytes "f9:2a:c2:..."
            return False
        try:
            return self._reportable(ipaddress.IPv6Address(candidate))
        except ValueError:
            return False

    def _reportable(self, address) -> bool:
        return (address.is_global and not address.is_multicast) or not self.keep_private_ip
