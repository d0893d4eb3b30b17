"""Teacher backends: where the multi-perspective rationales come from.

  TemplateTeacher  offline demonstration (rewrites gsm_symbolic gold solutions; no model)
  JsonlTeacher     rationales generated elsewhere (vLLM, an API), imported from JSONL
  HFTeacher        a local transformers model directory (mind_jax.data.teachers.hf;
                   imported lazily because it needs torch)
"""
from mind_jax.data.teachers.base import PERSPECTIVES, Teacher, TeacherRequest
from mind_jax.data.teachers.jsonl import JsonlTeacher
from mind_jax.data.teachers.template import TemplateTeacher


def __getattr__(name):
  if name == "HFTeacher":  # keep `import mind_jax.data.teachers` free of torch
    from mind_jax.data.teachers.hf import HFTeacher
    return HFTeacher
  raise AttributeError(name)


__all__ = ["PERSPECTIVES", "Teacher", "TeacherRequest", "JsonlTeacher",
           "TemplateTeacher", "HFTeacher"]
