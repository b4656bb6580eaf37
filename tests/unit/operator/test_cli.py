"""Commands that parse their own options get all of them, leading options included."""

import pytest

from lmforge.operator.cli import main


@pytest.mark.parametrize(("command", "option"), [("operator", "--namespace"), ("serve", "--model")])
def test_passthrough_commands_get_their_options(command, option, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert option in capsys.readouterr().out
