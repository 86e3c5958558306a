"""Hostile cases (issue 16): concurrent and mismatched runs, stores mixing models, garbage files, Ctrl-C, bugs.

Each case asserts the exit code (or the UserError), that the message is one line naming the culprit, that no
traceback reaches the terminal, and that nothing already written was changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dde_bench.bench.featurestore import build_store, open_store
from dde_bench.bench.results import ResultWriter, read_run
from dde_bench.cli import main
from dde_bench.errors import BUG_EXIT_CODE, INTERRUPT_EXIT_CODE, UserError
from dde_bench.files import LOCK_FILE
from dde_bench.modeling import Student, size_config
from dde_bench.modeling.checkpoint import load_teacher, save_model

SETTINGS = {
    "suite": "nlvr2",
    "models": ["tiny-teacher", "tiny-student"],
    "scenarios": ["online"],
    "batch_sizes": [1, 8],
    "gallery_sizes": [10],
    "dtypes": ["fp32"],
    "seed": 0,
    "timing_rule": {"min_iters": 5},
}
ROW = {"suite": "nlvr2", "model": "tiny-teacher", "scenario": "online", "batch_size": 1, "dtype": "fp32"}
ROW |= {"device": "cpu", "status": "ok", "gallery_size": None}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != LOCK_FILE}


def _one_line(text: str) -> str:
    lines = [s for s in text.strip().splitlines() if s.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _error_line(stderr: str) -> str:
    """The one dde-bench line of a command's stderr (progress bars of data preparation may come before it),
    which must be the last line; no traceback."""
    assert "Traceback" not in stderr
    ours = [s for s in stderr.strip().splitlines() if s.startswith("dde-bench:")]
    assert len(ours) == 1 and stderr.strip().splitlines()[-1] == ours[0], stderr
    return ours[0]


def _main(args: list[str], capsys) -> tuple[int, str]:
    """Run the guarded CLI entry in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def _cli(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=600,
        **kw,
    )


HOLDER = """
import sys
from pathlib import Path
from dde_bench.bench.results import ResultWriter
from dde_bench.files import FolderLock
what, path = sys.argv[1], sys.argv[2]
if what == "writer":
    w = ResultWriter(path, {"suite": "nlvr2"})
    w.append({"suite": "nlvr2", "model": "m", "status": "ok"})
else:
    Path(path).mkdir(parents=True, exist_ok=True)
    lock = FolderLock(path, "feature store")
    lock.acquire()
print("ready", flush=True)
sys.stdin.readline()
"""


def _holder(what: str, path: Path) -> subprocess.Popen:
    """A second process holding a run folder (a ResultWriter with one row) or a store's lock until stdin closes."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, what, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # the thread count this process runs with: resuming compares the resolved thread count
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert p.stdout.readline().strip() == "ready"
    return p


# ------------------------------------------------------------------------------------------ run folders
def test_two_writers_in_two_processes(tmp_path):
    run = tmp_path / "run"
    first = _holder("writer", run)
    try:
        before = _snapshot(run)
        with pytest.raises(UserError) as info:
            ResultWriter(run, {"suite": "nlvr2"}, resume=True)
        msg = _one_line(str(info.value))
        assert str(run) in msg and f"pid {first.pid}" in msg and "in use by another dde-bench process" in msg
        with pytest.raises(UserError, match=f"pid {first.pid}"):
            ResultWriter.check_target(run, resume=True)  # the early check sees it too, writing nothing
        assert _snapshot(run) == before
    finally:
        first.communicate("\n", timeout=60)
    assert first.returncode == 0
    assert not (run / LOCK_FILE).exists()  # released at exit
    w = ResultWriter(run, {"suite": "nlvr2"}, resume=True)  # free again
    assert len(w.rows) == 1


def test_second_store_build_through_the_cli_is_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    holder = _holder("store", store)
    try:  # refused before any data is loaded or model built
        code, err = _main(["cache", "build", "--suite", "nlvr2", "--model", "x", "--out", str(store)], capsys)
        line = _one_line(err)
        assert code == 2 and str(store) in line and f"pid {holder.pid}" in line
        assert sorted(p.name for p in store.iterdir()) == [LOCK_FILE]
    finally:
        holder.communicate("\n", timeout=60)


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    p = _holder("writer", run)
    p.kill()  # SIGKILL: no cleanup, the lock file stays
    p.wait(timeout=60)
    assert (run / LOCK_FILE).exists()
    with pytest.warns(
        RuntimeWarning, match=rf"took over the lock left by pid {p.pid} on .*no longer holds it"
    ):
        w = ResultWriter(run, {"suite": "nlvr2"}, resume=True)
    w.append({"suite": "nlvr2", "model": "m2", "status": "ok"})
    assert [r["model"] for r in w.rows] == ["m", "m2"]
    w.close()
    assert not (run / LOCK_FILE).exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    run = tmp_path / "run"
    w = ResultWriter(run, SETTINGS)
    w.append(ROW)
    w.close()
    before = _snapshot(run)
    other = SETTINGS | {"suite": "snli-ve", "seed": 1, "timing_rule": {"min_iters": 10}}
    for call in (
        lambda: ResultWriter(run, other, resume=True),
        lambda: ResultWriter.check_target(run, True, other),
    ):
        with pytest.raises(UserError) as info:
            call()
        msg = _one_line(str(info.value))
        assert msg.startswith(f"{run}: cannot resume: the run there was made with other settings")
        assert 'suite "nlvr2" -> "snli-ve"' in msg and "seed 0 -> 1" in msg
        assert 'timing_rule {"min_iters": 5} -> {"min_iters": 10}' in msg
    with pytest.raises(UserError, match="already holds results"):
        ResultWriter.check_target(run, resume=False)
    with pytest.raises(UserError, match="already holds results"):
        ResultWriter(run, SETTINGS)
    # device and threads are compared as resolved (run.json's environment), not as asked ("auto")
    with pytest.raises(UserError, match=r'device "cpu" -> "cuda:0"'):
        ResultWriter.check_target(run, True, SETTINGS, device="cuda:0")
    with pytest.raises(UserError, match=rf"threads {torch.get_num_threads()} -> 999"):
        ResultWriter.check_target(run, True, SETTINGS, threads=999)
    assert _snapshot(run) == before
    ResultWriter.check_target(run, True, SETTINGS | {"device": "auto"}, device="cpu")  # same run: fine


def test_resume_with_additions(tmp_path):
    run = tmp_path / "run"
    ResultWriter(run, SETTINGS).append(ROW)
    more = SETTINGS | {"models": [*SETTINGS["models"], "dide-b32-student"], "batch_sizes": [1, 8, 32]}
    before = _snapshot(run)
    with pytest.raises(UserError) as info:
        ResultWriter(run, more, resume=True)  # growing needs the explicit flag
    msg = _one_line(str(info.value))
    assert "batch_sizes [1, 8] -> [1, 8, 32]" in msg and "--resume-add allows adding models" in msg
    assert _snapshot(run) == before
    fewer = SETTINGS | {"models": ["tiny-teacher"]}
    with pytest.raises(UserError, match=r'models .* \(drops \["tiny-student"\]\)'):
        ResultWriter(run, fewer, resume=True, allow_additions=True)  # additions only, never removals
    w = ResultWriter(run, more, resume=True, allow_additions=True)
    assert w.done_keys() and len(w.rows) == 1
    w.close()
    info = json.loads((run / "run.json").read_text())
    assert info["settings"]["models"] == more["models"] and info["settings"]["batch_sizes"] == [1, 8, 32]
    assert info["history"][-1]["added"] == {"models": ["dide-b32-student"], "batch_sizes": [32]}
    ResultWriter(run, more, resume=True).close()  # the run now has the added settings: plain resume works


def test_out_naming_a_file_or_a_folder_with_results(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    for target in (f, f / "run"):
        with pytest.raises(UserError) as info:
            ResultWriter.check_target(target, resume=False)
        assert str(f) in _one_line(str(info.value)) and "not a folder" in str(info.value)
        with pytest.raises(UserError, match="not a folder"):
            ResultWriter(target, SETTINGS)
    assert f.read_text() == "keep me"


def test_run_cli_out_file_and_resume_mismatch(bench_env, tmp_path):
    """Through `dde-bench run`: --out naming a file; a real run resumed with another suite; both one line."""
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    quick = ["--models", "rt-teacher", "--scenarios", "online", "--batch-sizes", "1", "--no-report"]
    quick += ["--min-iters", "2", "--min-time", "0.01", "--device", "cpu", "--threads", "1"]
    p = _cli(["run", "--suite", "vqa", *quick, "--out", str(f)], env=bench_env)
    assert p.returncode == 2 and str(f) in _error_line(p.stderr) and "not a folder" in p.stderr
    assert f.read_text() == "keep me"
    run = tmp_path / "run"
    p = _cli(["run", "--suite", "vqa", *quick, "--out", str(run)], env=bench_env)
    assert p.returncode == 0, p.stderr[-3000:]
    before = _snapshot(run)
    p = _cli(["run", "--suite", "snli-ve", *quick, "--out", str(run), "--resume"], env=bench_env)
    line = _error_line(p.stderr)
    assert p.returncode == 2 and 'suite "vqa" -> "snli-ve"' in line and str(run) in line
    assert _snapshot(run) == before
    assert len(read_run(run)[1]) == 1
    holder = _holder("writer", tmp_path / "busy")  # a second writer: one line naming the first
    try:
        p = _cli(
            ["run", "--suite", "vqa", *quick, "--out", str(tmp_path / "busy"), "--resume"], env=bench_env
        )
        line = _error_line(p.stderr)
        assert (
            p.returncode == 2
            and f"pid {holder.pid}" in line
            and "in use by another dde-bench process" in line
        )
    finally:
        holder.communicate("\n", timeout=60)


# ------------------------------------------------------------------------------------------ feature stores
def _student(seed: int) -> Student:
    torch.manual_seed(seed)
    cfg = size_config(
        "tiny", hidden_size=32, num_layers=1, num_heads=2, mlp_size=64, image_size=32, patch_size=16
    )
    return Student(cfg, "vqa", 5).eval()


def _pixels(n: int) -> torch.Tensor:
    return torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(3))


def _store(d: Path, seed: int = 0) -> Path:
    return build_store(_student(seed), _pixels(6), d, shard_size=2, progress=False, model_name=f"s{seed}")


@pytest.fixture
def stores(tmp_path):
    return _store(tmp_path / "a", 0), _store(tmp_path / "b", 1)


def _refused(store: Path, shard: str, why: str, capsys) -> None:
    """open_store and `cache info` both refuse the store, one line naming the shard."""
    with pytest.raises(UserError) as info:
        open_store(store)
    msg = _one_line(str(info.value))
    assert f"{shard} does not verify" in msg and why in msg, msg
    code, err = _main(["cache", "info", str(store)], capsys)
    line = _one_line(err)
    assert code == 2 and shard in line and line.startswith("dde-bench: error: ")


def test_store_shard_from_another_model(stores, capsys):
    a, b = stores
    for suffix in (".safetensors", ".json"):  # shard and its record, both from model b
        (a / f"shard-00001{suffix}").write_bytes((b / f"shard-00001{suffix}").read_bytes())
    _refused(a, "shard-00001.safetensors", "built with another model", capsys)
    # only the tensor file swapped (the record still says model a): its header gives it away
    a2 = _store(a.parent / "a2", 0)
    (a2 / "shard-00002.safetensors").write_bytes((b / "shard-00002.safetensors").read_bytes())
    _refused(a2, "shard-00002.safetensors", "built with another model (its header names hash", capsys)


def test_store_resume_rebuilds_a_foreign_shard(stores, tmp_path):
    a, b = stores
    clean = {p.name: p.read_bytes() for p in sorted(a.iterdir())}
    for suffix in (".safetensors", ".json"):
        (a / f"shard-00001{suffix}").write_bytes((b / f"shard-00001{suffix}").read_bytes())
    (a / "manifest.json").unlink()  # an interrupted build, resumed
    built = []
    with pytest.warns(RuntimeWarning, match="shard-00001.safetensors does not verify .*another model"):
        build_store(
            _student(0),
            _pixels(6),
            a,
            shard_size=2,
            progress=False,
            model_name="s0",
            _after_shard=built.append,
        )
    assert built == [1]  # only the bad shard
    assert {p.name: p.read_bytes() for p in sorted(a.iterdir())} == clean


def test_garbage_and_truncated_shards(stores, capsys):
    a, _ = stores
    shard = a / "shard-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-40] + os.urandom(40))  # same size, other bytes
    _refused(a, "shard-00000.safetensors", "sha256 differs", capsys)
    shard.write_bytes(data[: len(data) // 2])  # truncated
    _refused(a, "shard-00000.safetensors", f"it is {len(data) // 2} bytes", capsys)
    shard.write_bytes(os.urandom(len(data)))  # garbage of the right size
    _refused(a, "shard-00000.safetensors", "not a readable safetensors file", capsys)


@pytest.mark.parametrize(
    "manifest, why",
    [
        ("[1, 2]", "a JSON list, not an object"),
        ("{not json", "malformed manifest (JSON"),
        (None, "'count' must be a int"),
        ("traversal", "must name shard-00000.safetensors"),
    ],
)
def test_garbage_manifest_is_one_line(stores, capsys, manifest, why):
    a, _ = stores
    path = a / "manifest.json"
    m = json.loads(path.read_text())
    if manifest is None:
        m["count"] = "6"
        manifest = json.dumps(m)
    elif manifest == "traversal":
        m["shards"][0]["file"] = "../b/shard-00000.safetensors"
        manifest = json.dumps(m)
    path.write_text(manifest)
    code, err = _main(["cache", "info", str(a)], capsys)
    line = _one_line(err)
    assert code == 2 and "manifest.json" in line and why in line, line


def test_store_lock_refuses_a_second_build(tmp_path):
    store = tmp_path / "s"
    holder = _holder("store", store)
    try:
        with pytest.raises(UserError, match=rf"{store}: this feature store is in use .*pid {holder.pid}"):
            _store(store)
        assert sorted(p.name for p in store.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.communicate("\n", timeout=60)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def teacher_dir(tmp_path):
    from dde_bench.modeling import Teacher

    torch.manual_seed(0)
    return save_model(Teacher(size_config("tiny"), "nlvr2"), tmp_path / "t")


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda c: [c], "config.json: malformed checkpoint config (expected a JSON object, got a list)"),
        (lambda c: c | {"kind": 3}, "config.json: 'kind' must be"),
        (lambda c: c | {"task": ["nlvr2"]}, "config.json: 'task' must be one of"),
        (lambda c: c | {"num_labels": "two"}, "config.json: 'num_labels' must be a positive integer"),
        (lambda c: c | {"config": [1, 2]}, "config.json: 'config': expected a JSON object"),
        (lambda c: c | {"config": c["config"] | {"hidden_size": "big"}}, "'config': hidden_size must be"),
        (lambda c: c | {"config": c["config"] | {"num_heads": 0}}, "'config': num_heads must be a positive"),
        (
            lambda c: c | {"config": c["config"] | {"hidden_size": 4096}},
            "implies at least",
        ),  # far larger than its weights
        (
            lambda c: c | {"config": c["config"] | {"num_layers": 10**6}},
            "implies at least",
        ),  # refused before building
        (lambda c: c | {"meta": "x"}, "'meta' must be a JSON object"),
    ],
)
def test_garbage_checkpoint_config_is_one_line(teacher_dir, edit, why):
    path = teacher_dir / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(UserError) as info:
        load_teacher(teacher_dir)
    msg = _one_line(str(info.value))
    assert why in msg and str(teacher_dir) in msg, msg


def test_garbage_config_through_the_cli(teacher_dir, capsys):
    (teacher_dir / "config.json").write_text("[]")
    args = [
        "train",
        "student",
        "--suite",
        "nlvr2",
        "--teacher",
        str(teacher_dir),
        "--out",
        str(teacher_dir / "s"),
    ]
    code, err = _main(args, capsys)
    assert (
        code == 2
        and "config.json: malformed checkpoint config (expected a JSON object, got a list)" in _one_line(err)
    )


PICKLE = """
import os, sys, torch, transformers
from dde_bench.modeling import size_config
from dde_bench.modeling.hf import hf_config_from
folder, marker = sys.argv[1], sys.argv[2]
m = transformers.ViltForQuestionAnswering(hf_config_from(size_config("tiny"), num_labels=3))
m.save_pretrained(folder)
os.remove(os.path.join(folder, "model.safetensors"))
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))
state = m.state_dict()
state["payload"] = Payload()
torch.save(state, os.path.join(folder, "pytorch_model.bin"))
"""


def test_pickle_weights_are_refused_in_one_line(tmp_path):
    from dde_bench.modeling.weights import load_torch_weights

    folder, marker = tmp_path / "vilt", tmp_path / "payload-ran"
    subprocess.run([sys.executable, "-c", PICKLE, str(folder), str(marker)], check=True, capture_output=True)
    with pytest.raises(UserError) as info:
        load_teacher(folder)
    msg = _one_line(str(info.value))
    assert "torch.load(weights_only=True) refused the pickle" in msg and "GLOBAL posix.system" in msg
    with pytest.raises(UserError, match=r"pytorch_model\.bin: refused by torch\.load\(weights_only=True\)"):
        load_torch_weights(folder / "pytorch_model.bin")
    assert not marker.exists()  # the payload never ran


# ------------------------------------------------------------------------------------------ the CLI entry
def test_ctrl_c_keeps_rows_and_says_how_to_resume(bench_env, tmp_path):
    run = tmp_path / "run"
    args = ["run", "--suite", "vqa", "--models", "rt-teacher,rt-student", "--scenarios", "online,cached"]
    args += ["--batch-sizes", "1,2,3,4,5,6", "--min-iters", "3", "--min-time", "0.4", "--no-report"]
    args += ["--device", "cpu", "--threads", "1", "--out", str(run)]
    p = subprocess.Popen(
        [sys.executable, "-m", "dde_bench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **bench_env, "OMP_NUM_THREADS": "1"},
    )
    jsonl = run / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 1):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == INTERRUPT_EXIT_CODE, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    line = err.strip().splitlines()[-1]
    n = len(read_run(run)[1])
    assert n >= 1 and line.startswith(f"dde-bench: interrupted; kept {n} row")
    assert f"in {run}; continue with: dde-bench run --suite vqa" in line and line.endswith("--resume")
    assert not (run / LOCK_FILE).exists()  # released on the way out


def test_unexpected_exception_is_a_bug_report_line(tmp_path, monkeypatch, capsys):
    import dde_bench.report.compare as compare
    from tests.report_fixtures import make_run

    a = make_run(tmp_path / "a")

    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom\nsecond line")

    monkeypatch.setattr(compare, "compare_runs", boom)
    monkeypatch.chdir(tmp_path)
    code, err = _main(["compare", str(a), str(a)], capsys)
    line = _one_line(err)
    assert code == BUG_EXIT_CODE
    assert line.startswith("dde-bench: internal error (ZeroDivisionError: boom; second line); this is a bug")
    crash = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert crash.parent == Path("reports") and crash.is_file()
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: boom" in text
    assert f"command: dde-bench compare {a} {a}" in text

    def writer_then_boom(*args, **kwargs):  # a bug while a run folder is open: the crash file goes there
        ResultWriter(tmp_path / "run", {"suite": "nlvr2"})
        raise KeyError("missing")

    monkeypatch.setattr(compare, "compare_runs", writer_then_boom)
    code, err = _main(["compare", str(a), str(a)], capsys)
    assert code == BUG_EXIT_CODE and f"the traceback is in {tmp_path / 'run'}/crash-" in _one_line(err)


def test_out_of_range_options_are_refused(tmp_path, capsys):
    from tests.report_fixtures import make_run

    a = make_run(tmp_path / "a")
    for args, culprit in [
        (["compare", str(a), str(a), "--max-slowdown=-50%"], "--max-slowdown"),
        (["compare", str(a), str(a), "--max-accuracy-drop", "200%"], "--max-accuracy-drop"),
        (["compare", str(a), str(a), "--max-memory-growth", "nan"], "--max-memory-growth"),
        (["compare", str(a), str(a), "--alpha", "0"], "--alpha"),
        (["gate", str(a), "--min-speedup", "-1"], "--min-speedup"),
    ]:
        code, err = _main(args, capsys)
        assert code == 2 and culprit in _one_line(err), (args, err)


def test_usage_errors_and_help_keep_their_exit_codes(capsys):
    code, err = _main(["run", "--no-such-option"], capsys)
    assert code == 2 and "No such option" in err and "Traceback" not in err
    code, _ = _main(["--help"], capsys)
    assert code == 0


def test_malformed_results_line_names_file_and_line(tmp_path, capsys):
    run = tmp_path / "run"
    w = ResultWriter(run, SETTINGS)
    for b in (1, 8, 32):
        w.append(ROW | {"batch_size": b})
    w.close()
    jsonl = run / "results.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join([lines[0], "{garbage", lines[2]]) + "\n")
    for args in (["report", str(run)], ["gate", str(run)]):
        code, err = _main(args, capsys)
        assert code == 2 and f"{jsonl}:2: malformed results row" in _one_line(err)
    with pytest.raises(UserError, match=r"results\.jsonl:2: malformed"):
        ResultWriter.check_target(run, resume=True)
    jsonl.write_text("\n".join([*lines, lines[0][:20]]))  # a crash mid-write: a warning, the same everywhere
    with pytest.warns(RuntimeWarning, match=r"results\.jsonl:4: truncated last line"):
        assert len(read_run(run)[1]) == 3
