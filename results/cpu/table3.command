# cpu/table3 (14 jobs) was run in pieces across two sessions, one torch thread per job, next to other work on 2 cores:
PAR="logger=none trainer.threads=1" bash experiments/run_cpu_studies.sh table3
# session of 2026-12-01: job 0 (FT s0, 00:09:48-00:20:45Z), job 1 interrupted (resumed below); this .command line was not written then
python -m lora_research.train -m experiment=cpu/table3 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/table3
# 2026-12-02: started 00:59Z, stopped 01:01Z by SIGTERM (job 1 checkpointed at step 29) to finish the E2E lr search rounds 2-5 first
python -m lora_research.train -m experiment=cpu/table3 logger=none trainer.threads=1 hydra.sweep.dir=outputs/cpu/table3
# 2026-12-02: 01:47:37Z to 03:37:51Z (6,614 s): jobs 1 (resumed) to 10; jobs 11-13 found completed (same config) and skipped
# second worker, next to the sweep, the grid's last cells into the same run folders (the sweep skips them as completed, same config):
python -m lora_research.train experiment=cpu/table3 experiment/cpu/table3=lora seed=1 logger=none trainer.threads=1 hydra.run.dir=outputs/cpu/table3/13_e2e-smollm2-lora_s1
# 02:36:31Z-02:48:18Z
python -m lora_research.train experiment=cpu/table3 experiment/cpu/table3=lora seed=0 logger=none trainer.threads=1 hydra.run.dir=outputs/cpu/table3/12_e2e-smollm2-lora_s0
# 02:56:26Z-03:07:57Z
python -m lora_research.train experiment=cpu/table3 experiment/cpu/table3=prefix_layer seed=1 logger=none trainer.threads=1 hydra.run.dir=outputs/cpu/table3/11_e2e-smollm2-prefix_layer_s1
# 03:08:15Z-03:21:55Z
python -m lora_research.results outputs/cpu/table3 --layout table3 --out results/cpu/table3.md
