python -m lora_research.train -m experiment=cpu/lr_search_rank hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none hydra.sweep.dir=outputs/cpu/lr_search_rank
# wall time: 228s (2026-12-01T19:02Z), 2 cores shared with other sessions' test runs (load average 3-7)
python -m lora_research.results outputs/cpu/lr_search_rank --layout lr_search --out results/cpu/lr_search_rank.md
