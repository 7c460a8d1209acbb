import pytest

from control_plane.errors import InvalidInputError
from control_plane.fleet.selectors import parse_selector

LABELS = {"site": "berlin", "hw": "rpi4", "canary": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("site=berlin", True),
        ("site=paris", False),
        ("hw!=rpi3", True),
        ("hw!=rpi4", False),
        ("canary", True),
        ("!canary", False),
        ("!gpu", True),
        ("site=berlin, hw=rpi4", True),
        ("site=berlin,hw=rpi3", False),
        ("missing!=x", True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize("text", ["site==berlin", "=x", "!site=berlin", "a=b=c", "sp ace=1"])
def test_bad_terms_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError, match="bad selector term"):
        parse_selector(text)


def test_canonical_text() -> None:
    assert parse_selector("b=2, a=1").text == "a=1,b=2"
