python -m lora_research.train -m experiment=cpu/lr_search_glue logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_glue
# wall time: 738s (2026-12-01T22:59:51Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_glue --layout lr_search --out results/cpu/lr_search_glue.md
# wall time: 1s (2026-12-01T22:59:52Z), 2 cores
