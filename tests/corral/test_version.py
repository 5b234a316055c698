"""Model versions order the way semver says."""

from __future__ import annotations

import pytest

from corral import Version, VersionError


def test_versions_order_numerically_and_releases_after_prereleases() -> None:
    ordered = ["0.9.0", "1.0.0-rc1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    assert sorted(ordered[::-1], key=Version.parse) == ordered


@pytest.mark.parametrize("text", ["1", "1.0", "v1.0.0", "1.0.0.0", "01.0.0", "", "1.0.0-"])
def test_non_semver_is_refused(text: str) -> None:
    with pytest.raises(VersionError, match="semantic version"):
        Version.parse(text)
