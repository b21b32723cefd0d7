"""The console is for people (lora_research.console): library warnings go to the run's log only, once."""
from __future__ import annotations

import io
import logging

import pytest

from lora_research import console


@pytest.fixture
def root_handlers(tmp_path):
    """The root logger as Hydra sets it up: a console handler and a file handler (train.log); restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    libs = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in ("huggingface_hub", "datasets")}
    out = io.StringIO()
    screen = logging.StreamHandler(out)
    log_file = tmp_path / "train.log"
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    root.handlers = [screen, file_handler]
    root.setLevel(logging.INFO)
    yield out, log_file
    file_handler.close()
    root.handlers, root.level = saved
    for n, (handlers, propagate) in libs.items():
        logging.getLogger(n).handlers, logging.getLogger(n).propagate = handlers, propagate


def test_hub_retry_warnings_go_to_the_log_once_not_to_the_console(root_handlers):
    out, log_file = root_handlers
    hub = logging.getLogger("huggingface_hub")
    hub.handlers = [logging.StreamHandler(out)]  # as huggingface_hub sets itself up at import (an earlier test
    hub.propagate = True                         # may have run quiet_libraries): its own handler, and the root's
    console.quiet_libraries()
    assert not any(console._is_console(h) for h in logging.getLogger("huggingface_hub").handlers)
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    logging.getLogger("datasets.load").warning("a datasets note")
    logging.getLogger("huggingface_hub.file_download").error("a hub error")
    logging.getLogger("lora_research.tasks.glue_files").info("loading nyu-mll/glue/sst2 from the Hugging Face hub")
    screen = out.getvalue()
    assert "Retrying" not in screen and "a datasets note" not in screen
    assert "a hub error" in screen and "loading nyu-mll/glue/sst2" in screen  # errors and our own lines stay
    text = log_file.read_text(encoding="utf-8")
    assert text.count("Retrying in 1s") == 1 and "a datasets note" in text and "a hub error" in text
    console.quiet_libraries()  # a second call adds no second filter
    screen_handler = next(h for h in logging.getLogger().handlers if getattr(h, "stream", None) is out)
    assert sum(isinstance(f, console.LibraryNoise) for f in screen_handler.filters) == 1


def test_file_logger_writes_the_log_only(root_handlers):
    out, log_file = root_handlers
    console.file_logger("lora_research.test_progress").info("decoded 1/3")
    assert "decoded 1/3" not in out.getvalue()
    assert "decoded 1/3" in log_file.read_text(encoding="utf-8")


def test_progress_bar_is_off_off_a_terminal_and_below_its_minimum():
    bar = console.progress_bar(10, "MR")  # pytest's stderr is not a terminal
    assert bar.disable
    bar.close()
    bar = console.progress_bar(10, "MR", min_total=64)
    assert bar.disable
    bar.close()
