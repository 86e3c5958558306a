"""Models: one ViLT transformer serving the teacher's joint stack and the student's two towers."""

from dde_bench.modeling.checkpoint import load_model, load_student, load_teacher, save_model
from dde_bench.modeling.config import SIZES, VLConfig, size_config
from dde_bench.modeling.models import TASKS, Student, Teacher, num_images
from dde_bench.modeling.transformer import VLTransformer

__all__ = [
    "SIZES",
    "TASKS",
    "Student",
    "Teacher",
    "VLConfig",
    "VLTransformer",
    "load_model",
    "load_student",
    "load_teacher",
    "num_images",
    "save_model",
    "size_config",
]
