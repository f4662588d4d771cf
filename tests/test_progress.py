"""Progress that fits where it runs: no terminal, few whole lines."""

import io

from common.progress import progress_bar


def test_without_a_terminal_a_bar_writes_a_few_whole_lines(monkeypatch):
    monkeypatch.setenv("STVIDEO_PROGRESS_SECONDS", "1000")
    log = io.StringIO()  # not a TTY, like a job log or CI
    with progress_bar(total=5000, desc="encode", unit="clip", file=log) as bar:
        for _ in range(5000):
            bar.update(1)
            bar.set_postfix(rejected=0, refresh=False)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 3  # the start, maybe one, the end
    assert lines[-1].startswith("encode: 100%") and "5000/5000" in lines[-1] and "clip/s" in lines[-1]
