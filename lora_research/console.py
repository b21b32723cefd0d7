"""The console is for people: one progress bar for long work, the result at the end, no library noise."""
from __future__ import annotations


def quiet_libraries() -> None:
    """No per-split ``datasets`` bars, no weight-loading / shard-writing bars, load reports or deprecation
    notes from transformers (a fresh task head is expected to be missing from a checkpoint)."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
