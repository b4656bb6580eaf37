"""The jobs' protocol: event lines among other output, the done summary in the termination
message, and error lines the backends quote."""

import json

from lmforge.operator.api import events


def test_finish_prints_the_summary_and_writes_the_termination_message(
    tmp_path, monkeypatch, capsys
):
    log = tmp_path / "termination-log"
    monkeypatch.setattr(events, "TERMINATION_LOG", str(log))
    sources = [{"uri": f"s3://raw/{i:04d}.txt", "digest": "sha256:" + "0" * 64} for i in range(60)]
    events.finish(tokens=900, sources=sources)
    (printed,) = events.parse(capsys.readouterr().out)
    assert printed["event"] == "done" and printed["tokens"] == 900 and len(printed["sources"]) == 60
    written = json.loads(log.read_text())  # the kubelet keeps 4 KiB: the long list is left out
    assert len(log.read_text()) <= 4000 and written["tokens"] == 900 and "sources" not in written
    events.finish(tokens=5, sources=sources[:2])
    assert json.loads(log.read_text())["sources"] == sources[:2]


def test_the_last_error_line_is_the_reason(capsys):
    events.error("spec.data: line 3: not JSON")
    text = "Traceback ...\n" + capsys.readouterr().err + "[rank1]: error: later\n"
    assert events.last_error(text) == "spec.data: line 3: not JSON"
    assert events.last_error("  error: indented\nok") == "indented"
    assert events.last_error("nothing here") is None


def test_exit_statuses_are_what_shells_see():
    assert [int(e) for e in events.Exit] == [0, 1, 2, 3, 143]
