"""The console is for people: one progress bar for long work, the result at the end, no library noise.

Details go to the run's log (Hydra's ``train.log``, the root logger's file handlers):

* :func:`quiet_libraries` turns off the libraries' own bars and load reports, and sends the warnings of the
  hub and data libraries (``huggingface_hub``'s retries when the hub cannot be reached, ``datasets``' notes) to
  the log only;
* :func:`file_logger` is a logger that writes to the log only (per-step records, decoding progress);
* :func:`progress_bar` is the one bar of a long piece of work, shown on a terminal only.
"""
from __future__ import annotations

import logging
import sys

#: Libraries whose log records below ERROR go to the run's log but not to the console.
LIBRARY_LOGGERS = ("huggingface_hub", "datasets", "fsspec", "filelock", "urllib3")


class LibraryNoise(logging.Filter):
    """On a console handler: drops records of :data:`LIBRARY_LOGGERS` below ERROR (the log keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".", 1)[0] not in LIBRARY_LOGGERS


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def quiet_libraries() -> None:
    """No per-split ``datasets`` bars, no weight-loading / shard-writing bars, load reports or deprecation
    notes from transformers (a fresh task head is expected to be missing from a checkpoint); the hub's and
    ``datasets``' warnings in the run's log, not on the console (they printed each one twice: through their
    own stderr handler and through the root's console handler)."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    for name in ("huggingface_hub", "datasets"):
        lib = logging.getLogger(name)
        lib.handlers = [h for h in lib.handlers if not _is_console(h)]
        lib.propagate = True  # to the root: its file handler logs them, its console handler filters them
    for handler in logging.getLogger().handlers:
        if _is_console(handler) and not any(isinstance(f, LibraryNoise) for f in handler.filters):
            handler.addFilter(LibraryNoise())


def file_logger(name: str) -> logging.Logger:
    """The logger ``name``, writing INFO and above to the root logger's file handlers only (the run's log), not
    to the console. Without file handlers (a notebook, a test) it writes nothing below WARNING."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    logger.setLevel(logging.INFO)
    return logger


def progress_bar(total: int, unit: str, *, initial: int = 0, min_total: int = 0):
    """The one progress bar of a long piece of work: on stderr, only on a terminal (``tqdm``'s ``disable=None``)
    and only for ``total >= min_total``; it leaves no line behind."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, disable=True if total < min_total else None,
                leave=False, dynamic_ncols=True)
