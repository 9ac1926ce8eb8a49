"""Start-up: the registries' names that the params checks use without importing torch are the registries'."""

from duel import config
from duel.backbones import BACKBONES
from duel.data.sources import SOURCES
from duel.eval.heads import HEADS


def test_the_names_the_checks_use_are_the_registries():
    assert tuple(SOURCES) == config.SOURCE_NAMES
    assert tuple(BACKBONES) == config.BACKBONE_NAMES
    assert tuple(HEADS) == config.HEAD_NAMES
