"""What ``lorita-bench run`` prints: plain progress lines outside a terminal, bars in one."""

import subprocess
import sys

from bench.execution import progress


def test_progress_outside_a_terminal_is_a_few_plain_lines(tmp_path):
    # stderr is a pipe here, as under tox, CI or `2> log`.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--preset", "quick", "--out", str(tmp_path / "out"),
         "--cache-dir", str(tmp_path / "ckpt"), "--methods", "lorita-n1,l1-filter", "--epochs", "3",
         "--finetune-epochs", "1", "--targets", "params:0.5,0.7", "--latency-rounds", "2",
         "--throughput-batch", "8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert "\x1b" not in stream and "\r" not in stream
    lines = proc.stderr.splitlines()
    # Both methods compress one plainly trained model, so one job: one line for its training, one per
    # method and target (fine-tuning) and one when it is done.
    assert len(lines) == 1 + 2 * 2 + 1, lines
    assert any(line.startswith("lorita-n1 s0 train: 2 ep") for line in lines)
    assert lines[-1] == "suite: 1/1 runs done (plain seed 0 (lorita-n1, l1-filter): done)"


def test_a_terminal_gets_a_bar_and_anything_else_gets_none(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert progress.bar(3, desc="x", unit="ep") is None
    monkeypatch.setattr(sys, "stderr", Stream(True))
    bar = progress.bar(3, desc="x", unit="ep")
    assert bar is not None
    bar.close()
