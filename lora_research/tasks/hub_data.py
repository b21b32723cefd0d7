"""A dataset from the Hugging Face hub, or a clear error saying how to use local files instead.

GLUE (``nyu-mll/glue``) and E2E (``tuetschek/e2e_nlg``) can be read from the hub. Offline, ``datasets`` retries
for ~25 s and then raises a ``ConnectionError`` that names neither setting that would avoid the hub; the run
would end on it. :func:`load_from_hub` says on the console what it loads and why the hub (before the wait), and
turns that error into one that names the local-files setting (the task's ``hint``).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def load_from_hub(what: str, why: str, hint: str, *args, **kwargs):
    """``datasets.load_dataset(*args, **kwargs)``. ``what`` names the data in the messages (``nyu-mll/glue/sst2``),
    ``why`` says why the hub is used (``GLUE_DIR / task.data_dir unset``), ``hint`` how to do without it."""
    import datasets

    log.info("loading %s from the Hugging Face hub (%s)", what, why)
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (ConnectionError, OSError) as e:  # offline: say how to use local files instead
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise ConnectionError(f"could not load {what} from the Hugging Face hub ({type(e).__name__}: {first}); "
                              f"without the hub, {hint}") from e
