"""The command line's own options: ``--version``, each subcommand's description and example
in ``--help``, ``--quiet``, and plain progress lines when stderr is a log, not a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from importlib.metadata import version

import pytest

from protorefine.cli import DESCRIPTIONS, EXAMPLES, build_parser, main
from protorefine.cli.progress import set_quiet
from refine_synth import write_slide_case

FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]
COMMANDS = ["convert", "refine", "export", "evaluate", "demo"]
PLAIN_LINE = re.compile(r"^convert s1: \d+% \(\d+/\d+\)")


@pytest.fixture(autouse=True)
def _not_quiet():
    yield
    set_quiet(False)  # main() sets it for the process: the next test starts as a user would


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=1024)


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "protorefine.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_version_is_the_installed_packages() -> None:
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"protorefine {version('protorefine')}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_a_description_and_an_example(name, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert DESCRIPTIONS[name] in lines  # one line of its own
    assert "\n" not in DESCRIPTIONS[name]
    assert EXAMPLES[name] and all(f"  {example}" in lines for example in EXAMPLES[name])
    assert all(example.startswith(f"protorefine {name}") for example in EXAMPLES[name])
    assert "--quiet" in out
    for example in EXAMPLES[name]:  # calls the parser takes as they are written
        assert build_parser().parse_args(example.split()[1:]).command == name


def test_progress_in_a_log_is_plain_lines(case, tmp_path) -> None:
    done = _cli("convert", str(case["slide"]), "--out", str(tmp_path / "z"))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # no tqdm carriage returns piling up in the log
    lines = done.stderr.splitlines()
    assert lines and all(PLAIN_LINE.match(x) or x.startswith("convert s1: done in") for x in lines)
    assert lines[-1].startswith("convert s1: done in")
    assert len(lines) <= 12  # one a tenth, and one when done
    assert done.stdout.strip().endswith("s1.zarr")


def test_progress_on_a_terminal_is_a_bar(case, tmp_path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protorefine.cli", "convert", str(case["slide"])]
            + ["--out", str(tmp_path / "z")],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert "\r" in shown and "convert s1" in shown  # tqdm redraws its line


def test_quiet_convert_shows_no_progress(case, tmp_path) -> None:
    done = _cli("convert", "--quiet", str(case["slide"]), "--out", str(tmp_path / "z"))
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout.strip().endswith("s1.zarr")


def test_a_failing_quiet_command_still_says_why(tmp_path) -> None:
    done = _cli("convert", "-q", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "z"))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("protorefine: error:") and "missing.svs" in line


@pytest.mark.slow
def test_quiet_refine_prints_only_the_summary_and_a_logged_rerun_plain_lines(
    case, tmp_path, capsys
) -> None:
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"])]
    args += ["--out", str(tmp_path / "o"), *FAST]
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress, no reading notes (the slide records no mpp)
    assert captured.out.splitlines()[-1].startswith("refined 1 slide(s) in ")

    assert main([*args, "--threshold", "0.5"]) == 0  # redraws the outline: output, pixels
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "records no pixel size" in err  # notes are back without --quiet
    assert re.search(r"^output: \d+% \(\d+/\d+\)", err, re.M)
    assert re.search(r"^output: done in \d+\.\d s$", err, re.M)
    assert re.search(r"^pixels: done in \d+\.\d s$", err, re.M)
