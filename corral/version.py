"""Semantic versions of models: MAJOR.MINOR.PATCH with an optional pre-release.

Versions are immutable in the registry and ordered here, so that "newer" has one
meaning everywhere (rollouts, rollback protection, the console).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from corral.errors import VersionError

__all__ = ["Version"]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed semantic version."""

    major: int
    minor: int
    patch: int
    pre: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text`` as semver.

        Raises:
            VersionError: ``text`` is not MAJOR.MINOR.PATCH[-PRE].
        """
        match = _SEMVER.match(text) if isinstance(text, str) else None
        if match is None:
            raise VersionError(
                f"Expected a semantic version like 1.2.0, got {text!r}; "
                "use MAJOR.MINOR.PATCH with no leading zeros"
            )
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor), int(patch), pre or "")

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{self.pre}" if self.pre else core

    def _key(self) -> tuple[int, int, int, int, str]:
        # A release sorts after its pre-releases (1.0.0-rc1 < 1.0.0).
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, self.pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()
