"""docs/fidelity.md: generated from the code and the profiles, and every remaining difference explained."""

from __future__ import annotations

import pytest

from pipeline import fidelity
from tests.project_copy import ROOT


def test_the_fidelity_page_is_the_generated_one():
    page = (ROOT / "docs" / "fidelity.md").read_text()
    assert page == fidelity.render(), "docs/fidelity.md is out of step: run `python tools/sync_docs.py`"


@pytest.mark.parametrize("method", list(fidelity.REFERENCES))
def test_the_reference_profile_differs_from_a_reference_only_with_a_reason(method):
    unexplained = [r["component"] for r in fidelity.rows(method) if r["differs"] and not r["reason"]]
    assert not unexplained, f"{method}: the reference profile differs without a reason: {unexplained}"


def test_every_method_of_the_reference_profile_has_its_reference():
    profile = fidelity.profile_config(fidelity.PROFILES["reference"])
    assert set(profile.recipes) <= set(fidelity.REFERENCES)
    assert set(fidelity.REFERENCES) >= {"simclr", "sdclr", "bcl", "gh", "moco", "dmoco"}
