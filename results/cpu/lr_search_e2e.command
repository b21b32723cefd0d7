python -m lora_research.train -m experiment=cpu/lr_search_e2e logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 4768s (2026-12-02T00:09:34Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 2s (2026-12-02T00:09:36Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_e2e logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 1589s (2026-12-02T01:28:37Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 1s (2026-12-02T01:28:38Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_e2e logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 931s (2026-12-02T01:47:02Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 1s (2026-12-02T01:47:03Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_e2e logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 920s (2026-12-02T02:02:59Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 2s (2026-12-02T02:03:01Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_e2e logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 378s (2026-12-02T02:09:55Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 3s (2026-12-02T02:09:58Z), 2 cores
python -m lora_research.train -m experiment=cpu/lr_search_e2e hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/lr_search_e2e
# wall time: 22s (2026-12-02T04:00:19Z), 2 cores
python -m lora_research.results outputs/cpu/lr_search_e2e --layout lr_search --out results/cpu/lr_search_e2e.md
# wall time: 1s (2026-12-02T04:00:20Z), 2 cores
