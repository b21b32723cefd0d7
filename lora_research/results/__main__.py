"""``python -m lora_research.results``: see :mod:`lora_research.results`."""
from lora_research.results import main

raise SystemExit(main())
