"""The results schema shared by the harness (writer) and the reports, compare, gate and the results API (readers).

A run folder holds:
  run.json        the run's settings (``settings``: the resolved options, suite and model cards, timing rule,
                  threads, seed) and environment (``environment``: versions, device, driver, CPU, threads, git
                  commit), with ``schema_version`` and ``created``
  results.jsonl   one JSON object per measurement, appended as measured (raw latency samples included)
  results.csv     the same rows without the raw samples, rewritten after every row (``stage_ms`` as JSON text)
Rows are matched across runs by MATCH_KEYS. Bump SCHEMA_VERSION on any incompatible change; adding a column is
compatible (new columns go at the end of COLUMNS). The JSON Schema of both files is
``dde_bench/schemas/results-row.v1.schema.json`` and ``run.v1.schema.json``; ``dde_bench.load_results`` reads a
run folder into a DataFrame (nested fields expanded, gallery rows without a batch size).
"""

SCHEMA_VERSION = 1

# A row is identified (for --resume, compare and reports) by these keys.
MATCH_KEYS = ("suite", "model", "scenario", "batch_size", "gallery_size", "dtype", "device")

# Columns every row carries (None / "n/a" when not measured). Extra keys are allowed.
COLUMNS = (
    "schema_version",
    "suite",
    "task",
    "model",
    "model_kind",  # teacher | student | hf-vilt
    "size",  # tiny | b32 | ...
    "scenario",  # online | cached | gallery
    # online / cached: items per call. Gallery rows write the gallery size here too (so MATCH_KEYS and --resume
    # of schema 1 keep working); read gallery_size for them (dde_bench.load_results leaves their batch_size empty)
    "batch_size",
    "gallery_size",  # gallery scenario only: the number of images one text query is scored against; else None
    "dtype",  # fp32 | bf16 | fp16
    "device",  # cpu | cuda:0 ...
    "threads",  # torch.get_num_threads() on CPU
    "status",  # ok | oom | error | skipped (e.g. a teacher gallery query over its time budget: error says why)
    "error",
    # the model's accuracy on the suite's evaluation split (official metric), bootstrap 95% interval, copied to
    # every row of the model; None = not measured (random weights). A row with status != ok measured no speed
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "accuracy_metric",  # accuracy | vqa_accuracy
    "consistency",  # NLVR2 only
    # latency of one call (a batch; a gallery query), milliseconds, from n_samples timed calls. In interleaved
    # groups every member gets the same number of calls, one per round, so n_samples is also the round count.
    # What a sample size supports being printed: bench.stats.supports (p99 needs 100 calls, an interval 10 rounds)
    "latency_p50_ms",
    "latency_iqr_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "n_samples",
    "throughput_per_s",  # items / total measured time
    # memory, MB (1e6 bytes)
    "peak_mem_mb",  # CUDA max_memory_allocated on GPU; on CPU the peak of live tensors (tensor_peak_mb)
    # (weights_mb + activation_peak_mb, below, split the tensor peak; gallery rows: not measured)
    "cuda_max_reserved_mb",
    "nvml_device_used_mb",
    "nvml_process_mb",
    "rss_peak_mb",
    # energy
    "energy_j_per_item",  # NVML energy counter on NVIDIA GPUs; None elsewhere (energy_note says why)
    # compute
    "flops_per_item",
    "flop_utilisation",  # achieved FLOP/s over the GPU's datasheet dense peak (listed GPUs; n/a on CPU)
    "achieved_flops_per_s",  # flops_per_item x throughput
    "gemm_peak_share",  # achieved FLOP/s over this device's measured dense matmul rate (run.json gemm_peak)
    # student and reference rows: speedup over their teacher (same size, scenario, batch or gallery size, dtype),
    # measured interleaved in one process: ratio of medians with a paired bootstrap 95% interval over rounds
    # (bench.stats.speedup); speedup_flop_bound is the FLOP ratio (teacher FLOPs / model FLOPs per item), not a
    # bound: a measured speedup above it means the model does each FLOP faster than the teacher
    "teacher_model",
    "speedup_vs_teacher",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_flop_bound",
    # per-stage median time of one call, milliseconds, a JSON object (student: image_tower (online only),
    # text_tower, fusion_head, each timed on its own; teacher and reference: joint = the whole call)
    "stage_ms",
    # student cached / gallery rows: building the image-feature cache (gallery: for that gallery's images)
    "cache_build_s",
    "cache_bytes_per_image",
    "timestamp",
    # added in place (schema 1 stays readable): written by the harness, None where not measured
    "weights_mb",  # CPU tensor peak split: weights (parameters + buffers) of the modules the call uses
    "activation_peak_mb",  # ... and activations + temporaries at the peak
    "tensor_peak_mb",  # the peak of live tensors during one call (weights + activations)
    "break_even_queries",  # student gallery rows: cache build s / (teacher - student s per query); None: teacher
    # not measured at that size, or the student not faster
    "note",  # what the row measured, in words (e.g. paper-size input shape, store read shard by shard)
    # LoadGen scenarios (single-stream | server | offline; bench/scenarios/serving.py). A student's cached form is
    # the row MODEL@cached; batch_size is the most samples per call (server: the batcher's max batch)
    "serving_form",  # online (the full call; a teacher's only form) | cached (image features precomputed)
    "target_qps",  # server: the offered (Poisson) QPS of the row's test; offline: LoadGen's expected QPS
    "achieved_qps",  # server: completed samples/s; offline: samples/s; single-stream: QPS with LoadGen overhead
    "serving_p50_ms",  # LoadGen's per-sample latency percentiles of the row's test, milliseconds
    "serving_p90_ms",
    "serving_p99_ms",
    "serving_p999_ms",
    "latency_bound_ms",  # server: the bound on the latency_percentile's latency
    "latency_percentile",
    "loadgen_result",  # LoadGen's verdict: VALID | INVALID
    "loadgen_reason",  # why INVALID (LoadGen's own recommendation and early-stopping lines), else ""
    "max_qps_at_bound",  # server: the highest offered QPS LoadGen judged VALID; None when none was
    "qps_search",  # server: converged | budget spent | trial cap | bound not met
    "qps_search_s",  # wall time of the search
    "qps_trials",  # server: every test of the search [{target_qps, achieved_qps, p50..p999 ms, result, ...}]
    # this scenario's metric over the teacher's: server max QPS, offline samples/s, single-stream teacher p90 / this
    "serving_ratio_vs_teacher",
    "serving_flop_ratio",  # teacher FLOPs per item / this form's
    "batcher_max_batch",
    "batcher_max_delay_ms",
    "batcher_mean_batch",  # samples per call the batcher formed in the row's test
    "loadgen_min_duration_s",
    "loadgen_min_query_count",
    "serving_accuracy",  # LoadGen accuracy mode: its logged responses scored with the official metric
    "serving_accuracy_matches",  # ... equal to the harness's accuracy of the same model
    "loadgen_log_dir",  # RUN-relative folder of the row's LoadGen logs (summary, detail, accuracy)
    "serving_profile",  # quick | mlperf: where the suite's serving block left a setting unset
    "qps_search_budget_s",
    # what ended the row's timing: rule (its minimums) | precision (measured on until the --rel-ci target) |
    # max_time | max_iters (a cap, before the minimums or the precision target were met)
    "stopped_by",
)

# the name reports show for speedup_flop_bound (the column keeps its name)
FLOP_RATIO_LABEL = "FLOP ratio"

RAW_SAMPLES_KEY = "latency_samples_ms"  # in results.jsonl only

# '<model>@<variant>' rows measure a variant of <model> (`@fusion-cache`, `@compiled`) in the same run
VARIANT_SEP = "@"


def plain_name(name: str) -> str:
    """The model a variant row (`tiny-student@compiled`, `...@fusion-cache`) is a variant of."""
    return name.split(VARIANT_SEP)[0]
