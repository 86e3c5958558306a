"""The benchmark harness.

Model-agnostic measuring layer (import the submodules; this package import stays light):

  timing   ``measure`` / ``measure_interleaved`` -> ``Measurement`` (raw samples, lazy statistics)
  stats    ``speedup`` (ratio of medians + bootstrap CI), ``mean_ci``, ``mann_whitney``,
           ``regression_verdict``
  memory   ``MemoryTracker`` (CUDA peak allocated/reserved, NVML device/process, CPU peak RSS growth)
  energy   ``EnergyMeter`` (NVML energy counter over the measured window)
  flops    ``count_flops``, ``flops_per_item``, ``peak_flops``, ``model_flop_utilisation``
  results  ``ResultWriter`` / ``read_run_folder`` (run.json, results.jsonl, results.csv; see ``schema``)
  guard    ``is_oom`` / ``free_memory`` (out-of-memory -> status "oom", the sweep goes on)
  nvml     NVML handles matched to torch devices by PCI bus id
"""
