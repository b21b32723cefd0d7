python -m lora_research.train -m experiment=cpu/lr_search_glue logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_glue
# wall time: 738s (2026-12-01T22:59:51Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_glue --layout lr_search --out results/cpu/lr_search_glue.md
# wall time: 1s (2026-12-01T22:59:52Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_glue logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_glue
# wall time: 160s (2026-12-02T01:39:06Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_glue --layout lr_search --out results/cpu/lr_search_glue.md
# wall time: 2s (2026-12-02T01:39:08Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_glue logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_glue
# wall time: 80s (2026-12-02T01:41:26Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_glue --layout lr_search --out results/cpu/lr_search_glue.md
# wall time: 2s (2026-12-02T01:41:28Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_glue logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_glue
# wall time: 18s (2026-12-02T01:41:49Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_glue --layout lr_search --out results/cpu/lr_search_glue.md
# wall time: 1s (2026-12-02T01:41:50Z), 2 cores
