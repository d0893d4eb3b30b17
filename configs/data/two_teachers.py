"""Two teachers in one dataset: a model behind an OpenAI-compatible server (vLLM, SGLang,
TGI, `transformers serve` or an API) and rationales written elsewhere, in a JSONL file.
A perspective is a (teacher, paradigm) pair named "teacher/paradigm": the records and
the manifest (by_teacher, teacher_usage) say which teacher wrote which slot.

  python -m mind_jax.data.build --config configs/data/two_teachers.py --out DIR \
      --config.questions.jsonl_path=questions.jsonl \
      --config.teachers.server.base_url=http://127.0.0.1:8000/v1 \
      --config.teachers.server.model=Qwen/Qwen2.5-72B-Instruct \
      --config.teachers.notes.jsonl_path=rationales.jsonl
"""
import ml_collections

from mind_jax.config import PERSPECTIVE_PROMPTS, default_data_config, teacher_config

PARADIGMS = ("formal_symbolic", "decomposition", "planning", "socratic")
ANSWER_RULE = " Finish with the sentence 'The answer is X.' where X is the final answer."


def get_config():
  config = default_data_config()
  config.questions.source = "jsonl"
  config.questions.jsonl_path = "questions.jsonl"
  config.teachers = ml_collections.ConfigDict({
      "server": teacher_config(backend="openai", base_url="http://127.0.0.1:8000/v1",
                               model="teacher", temperature=0.7, max_new_tokens=512),
      "notes": teacher_config(backend="jsonl", jsonl_path="rationales.jsonl"),
  })
  names = tuple(f"{teacher}/{paradigm}" for teacher in ("server", "notes")
                for paradigm in PARADIGMS)
  p = config.perspectives
  p.names = names
  p.prompts = {name: PERSPECTIVE_PROMPTS[name.split("/")[1]] + ANSWER_RULE
               + "\n\nProblem: {question}" for name in names}
  p.teachers = {name: name.split("/")[0] for name in names}
  return config
