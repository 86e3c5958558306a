"""The benchmark harness: the measuring layer (it never trains models and never renders reports).

Import the submodules; this package import stays light.

  workload   the suite's evaluation data, the run's models (``Entry``), their inputs and each scenario's call
  context    ``TimingRule``, ``RunPlan`` (resolved settings), ``RunContext`` (rows, finished keys, the one
             OOM / error policy, image features shared by scenarios)
  scenarios  one module per scenario behind one protocol: batched (online, cached), gallery
  runner     ``RunConfig`` -> ``plan_run`` -> ``Runner``: loads, scores, runs each scenario
  variants   the run-option variants ``--variants int8,ort`` (``MODEL@int8``, ``MODEL@ort``): what each is, its
             comparison rule and the tolerance of its output check; ``ort`` exports and runs the ORT rows
  trackers   memory and energy of one call, in passes of their own
  timing     ``measure`` / ``measure_interleaved`` -> ``Measurement`` (raw samples, lazy statistics)
  stats      ``speedup`` (ratio of medians + bootstrap CI, paired over interleaved rounds), ``mean_ci``,
             ``median_round_ratio``, ``wilcoxon_rounds``, ``mann_whitney``, ``regression_verdict`` (the one rule)
  abgate     the A/B speed gate: this checkout against a base commit, alternating worker processes
  memory     ``MemoryTracker`` (CUDA peak allocated/reserved, NVML device/process, CPU peak RSS growth)
  energy     ``EnergyMeter`` (NVML energy counter over the measured window)
  flops      ``count_flops``, ``flops_per_item``, ``peak_flops``, ``model_flop_utilisation``
  results    ``ResultWriter`` / ``read_run_folder`` (run.json, results.jsonl, results.csv; see ``schema``)
  featurestore  sharded on-disk image-feature stores (the gallery scenario, ``dde-bench cache``)
  guard      ``is_oom`` / ``free_memory``
  nvml       NVML handles matched to torch devices by PCI bus id
"""
