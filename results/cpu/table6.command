python -m lora_research.train -m experiment=cpu/table6 hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none hydra.sweep.dir=outputs/cpu/table6
# wall time: 2174s (2026-12-01T19:36:45Z to 20:12:59Z): 45 jobs, 2 at a time, on 2 cores shared with other sessions' test suites (load average 9-12)
python -m lora_research.results outputs/cpu/table6 --layout table6 --out results/cpu/table6.md --runs-csv results/cpu/table6_runs.csv
