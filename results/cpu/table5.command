python -m lora_research.train -m experiment=cpu/table5 hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none hydra.sweep.dir=outputs/cpu/table5
# wall time: 1992s (2026-12-01T19:03:26Z to 19:36:38Z): 21 jobs, 2 at a time, on 2 cores shared with other sessions' test suites (load average 9-12 throughout)
python -m lora_research.results outputs/cpu/table5 --layout table5 --out results/cpu/table5.md --runs-csv results/cpu/table5_runs.csv
