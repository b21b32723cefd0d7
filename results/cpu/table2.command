python -m lora_research.train -m experiment=cpu/table2 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/table2
# wall time: 2153s (2026-12-02T01:35:17Z), 2 cores
python -m lora_research.results outputs/cpu/table2 --layout table2 --out results/cpu/table2.md
# wall time: 3s (2026-12-02T01:35:20Z), 2 cores
python -m lora_research.train -m experiment=cpu/table2 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/table2
# wall time: 1918s (2026-12-02T02:13:49Z), 2 cores
python -m lora_research.results outputs/cpu/table2 --layout table2 --out results/cpu/table2.md
# wall time: 4s (2026-12-02T02:13:53Z), 2 cores
