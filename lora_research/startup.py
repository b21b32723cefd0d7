"""Start-up without the cyclic garbage collector's scans (issue #13, goal 6: start-up).

Importing torch, transformers (its Trainer), datasets, Hydra and the project creates ~760k objects that the
cyclic collector tracks, next to no garbage among them. Python runs a young-generation pass every 700 new
objects and a full pass whenever the old generation has grown by a quarter, each pass scanning what is alive:
about 1 s of the ~5.5 s those imports take on this 2-core machine (4.5-5.1 s with collection paused,
5.5-6.2 s without; ``python -c "import gc; gc.disable(); import lora_research.train, lora_research.training"``).

:func:`imports_unscanned` pauses collection for a block of imports, then moves every object alive into the
permanent generation (``gc.freeze``): no later pass (the training loop's) scans them again. What the imports
left in reference cycles (~14k small objects, measured with ``gc.collect()``) is frozen with them instead of
collected; reference counting frees everything else as always. Nothing computed changes.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def imports_unscanned():
    """Run the block with cyclic collection paused; afterwards freeze what is alive and resume collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
