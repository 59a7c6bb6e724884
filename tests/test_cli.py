"""Every command line of muonlib prints its help, for the whole command and each subcommand."""
import argparse
import importlib
from unittest import mock

import pytest

COMMANDS = ("bench", "book", "data", "experiments", "ledger", "train")


def parsers(module_name: str) -> list[list[str]]:
    """The argument lists that ask for help: the command's own and each subcommand's."""
    seen = []

    def record(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    module = importlib.import_module(f"muonlib.{module_name}")
    with mock.patch.object(argparse.ArgumentParser, "parse_args", record), pytest.raises(SystemExit):
        module.main([])
    subcommands = [a for a in seen[0]._actions if isinstance(a, argparse._SubParsersAction)]
    return [["--help"]] + [[name, "--help"] for action in subcommands for name in action.choices]


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_command_and_subcommand_prints_its_help(module_name, capsys):
    module = importlib.import_module(f"muonlib.{module_name}")
    for argv in parsers(module_name):
        with pytest.raises(SystemExit) as exit_:
            module.main(argv)
        assert exit_.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out, argv
