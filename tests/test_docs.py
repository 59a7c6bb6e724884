"""The examples in the public classes' docstrings (shown on the API page) run as written."""

import doctest
import importlib

import pytest

MODULES = ["muonlib.optim", "muonlib.models.gpt", "muonlib.models.decode", "muonlib.results.ladders", "muonlib.results.ablations",
           "muonlib.results.architectures", "muonlib.results.decode"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    failures, tried = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
