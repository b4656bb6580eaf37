"""Commands that parse their own options get all of them, leading options included."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("command", "option"), [("operator", "--namespace"), ("serve", "--model")])
def test_passthrough_commands_get_their_options(command, option):
    # `lmforge serve` becomes the server's process (exec): run the command as a user does.
    done = subprocess.run(
        [sys.executable, "-m", "lmforge.operator.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert option in done.stdout
