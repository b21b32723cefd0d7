python -m lora_research.train -m experiment=cpu/table18 hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/table18
# wall time: 4456s (2026-12-02T05:14:36Z), 2 cores
python -m lora_research.results outputs/cpu/table18 --layout table18 --out results/cpu/table18.md
# wall time: 3s (2026-12-02T05:14:39Z), 2 cores
