"""dde-bench: train, measure and compare the DiDE dual-encoder student against its ViLT teacher.

Python entries::

    from dde_bench import load_teacher, load_student
    teacher = load_teacher("path/to/checkpoint-or-transformers-vilt")
    student = load_student("path/to/student-checkpoint")
    results = load_results("reports/runs/latest-nlvr2")   # .rows (a DataFrame), .settings, .environment
"""

from dde_bench.errors import UserError

__all__ = ["UserError", "load_teacher", "load_student", "load_results"]
__version__ = "0.1.0"


def load_teacher(path_or_id, **kwargs):
    """Load a fusion-encoder teacher: a dde-bench checkpoint folder or a transformers ViLT checkpoint."""
    from dde_bench.modeling.checkpoint import load_teacher as _load

    return _load(path_or_id, **kwargs)


def load_student(path, **kwargs):
    """Load a dual-encoder student from a dde-bench checkpoint folder."""
    from dde_bench.modeling.checkpoint import load_student as _load

    return _load(path, **kwargs)


def load_results(run_dir):
    """Read a run folder into a ``Results``: ``.rows`` (a pandas DataFrame, one row per measurement, nested
    fields expanded, gallery size in its own column), ``.settings`` and ``.environment`` (see
    :mod:`dde_bench.results_api`; the row schema: ``dde_bench/schemas/results-row.v1.schema.json``)."""
    from dde_bench.results_api import load_results as _load

    return _load(run_dir)
