"""Teacher backends: the offline template teacher, JSONL import, a local HF model."""
import json
import re

import numpy as np
import pytest

from mind_jax.data import judge
from mind_jax.data.questions import Question, load_reasoning_gym
from mind_jax.data.teachers import (PERSPECTIVES, JsonlTeacher, Teacher, TeacherRequest,
                                    TemplateTeacher)
from mind_jax.data.teachers import template as tmpl


def cot_final(question: Question) -> str:
  return re.findall(r"^####\s*(.+?)\s*$", question.rationale, re.MULTILINE)[-1]


@pytest.fixture(scope="module")
def gsm_items():
  return load_reasoning_gym("gsm_symbolic", size=20, seed=7)


def requests_for(items, perspectives=PERSPECTIVES):
  return [TeacherRequest(q, p, prompt=f"[{p}] {q.question}") for q in items for p in perspectives]


# ------------------------------------------------------------------- template


def test_template_teacher_writes_8_distinct_judged_correct_rationales(gsm_items):
  teacher = TemplateTeacher(seed=0)
  assert isinstance(teacher, Teacher) and teacher.name == "offline-demo-template"
  out = teacher.generate(requests_for(gsm_items))
  assert len(out) == 8 * len(gsm_items)
  for i, q in enumerate(gsm_items):
    texts = out[8 * i:8 * i + 8]
    assert len(set(texts)) == 8, q.id
    for text in texts:
      assert text.endswith(f"The answer is {cot_final(q)}.")
      assert "####" not in text
      assert judge.judge(text, q.answer, "numeric").correct, (q.id, text)


def test_template_teacher_covers_the_paradigms_in_order():
  assert tuple(tmpl.PARADIGM_WRITERS) == PERSPECTIVES


def test_template_teacher_is_deterministic(gsm_items):
  requests = requests_for(gsm_items[:5])
  first = TemplateTeacher(seed=1).generate(requests)
  assert first == TemplateTeacher(seed=1).generate(requests)
  assert first != TemplateTeacher(seed=2).generate(requests)  # the seed varies the phrasing


def test_each_paradigm_follows_its_shape(gsm_items):
  teacher = TemplateTeacher()
  q = gsm_items[0]
  text = {p: teacher.rationale(q, p) for p in PERSPECTIVES}
  assert re.search(r"^r1 = ", text["formal_symbolic"], re.MULTILINE)
  assert "Sub-problem 1:" in text["decomposition"]
  plan = text["planning"]
  assert "Step 1:" in plan and plan.index("1. ") < plan.index("Step 1:")  # plan, then execution
  assert "simple version" in text["analogy"]
  assert text["socratic"].count("?") >= 3
  assert "Candidate A" in text["contrastive"] and "eliminated" in text["contrastive"]
  assert "What if" in text["counterfactual"] or "would change" in text["counterfactual"]
  # The intuitive one spells the arithmetic out in words.
  sol = tmpl.parse_solution(q.question, q.rationale)
  if not sol.failed:
    assert not re.search(r"[×÷=]", text["intuitive"])


def test_the_answer_is_the_gold_solutions_own_value():
  """A wrong gold solution stays wrong, so the judge can drop it."""
  q = Question("q", "Tom has 3 boxes of 4 apples and eats 2. How many are left?", answer="10",
               rationale="He has 3 * 4 = 12 apples.\nHe has 12 - 2 = 10 left.\n#### 11")
  for p in PERSPECTIVES:
    text = TemplateTeacher().rationale(q, p)
    assert text.endswith("The answer is 11.")
    assert not judge.judge(text, q.answer, "numeric").correct


def test_counterfactual_redoes_the_steps():
  q = Question("q", "Tom has 3 boxes of 4 apples and eats 2. How many are left?", answer="10",
               rationale="He has 3 * 4 = 12 apples.\nHe has 12 - 2 = 10 left.\n#### 10")
  # Doubling 3 or 4 gives 3*8-2 = 22; doubling 2 gives 12-4 = 8.
  expected = {"3": "22", "4": "22", "2": "8"}
  seen = set()
  for seed in range(12):
    text = TemplateTeacher(seed=seed).rationale(q, "counterfactual")
    m = re.search(r"What if (\d+) were (\d+) instead\? Redoing the same steps gives (\d+)", text)
    assert m, text
    assert int(m.group(2)) == 2 * int(m.group(1)) and m.group(3) == expected[m.group(1)]
    seen.add(m.group(1))
  assert len(seen) > 1


def what_ifs(question, seeds=range(12)):
  """{changed number: (new number, new result)} over several phrasing seeds."""
  out = {}
  for seed in seeds:
    text = TemplateTeacher(seed=seed).rationale(question, "counterfactual")
    m = re.search(r"What if (\S+) were (\S+) instead\? Redoing the same steps gives (\S+) ", text)
    if m:
      out[m.group(1)] = (m.group(2), m.group(3))
  return out


def test_counterfactual_links_fraction_parts_and_halves_shares():
  ratio = Question("q", "Sugar and water are in the ratio 141:27. She used 1176 in total. "
                   "How much sugar?", "987", rationale="The ratio total is 141+27 = 168\n"
                   "She used 141/168*1176 = 987\n#### 987")
  assert what_ifs(ratio) == {"27": ("54", "850.3385"), "141": ("282", "1073.2427"),
                             "1176": ("2352", "1974")}
  share = Question("q", "Of 80 apples, 75% are red. How many are red?", "60",
                   rationale="80 * 75% = 60\n#### 60")
  assert what_ifs(share) == {"80": ("160", "120"), "75%": ("37.5%", "30")}
  # 25% twice: which one a step uses is a guess, so no what-if is claimed.
  twice = Question("q", "96 balls, 25% tennis balls, 25% of those white. White ones?", "6",
                   rationale="96 * 0.25 = 24\n24 * 0.25 = 6\n#### 6")
  assert what_ifs(twice) == {}


def test_unknown_perspective_fails(gsm_items):
  with pytest.raises(ValueError, match="unknown perspective 'telepathic'"):
    TemplateTeacher().generate([TeacherRequest(gsm_items[0], "telepathic", "")])


def test_no_gold_solution_gives_none():
  q = Question("q", "What is 2 + 2?", "4")
  assert TemplateTeacher().generate([TeacherRequest(q, "socratic", "")]) == [None]


@pytest.mark.parametrize("line,calcs", [
    ("First: 90 onion / 10 onion/minute = 9 minutes", ["90 ÷ 10 = 9"]),
    ("For kiwi, bought 38 fewer than the 93 apple, so 93 - 38 = 55 kiwi", ["93 - 38 = 55"]),
    ("Warm water mile = 1+2(22)=45.0 minutes", ["1 + 2 × (22) = 45.0"]),
    ("So, a lasagna will last for 90/18 = 5 days.", ["90 ÷ 18 = 5"]),
    ("It takes her 12÷1/3=36 minutes.", ["12 ÷ 1/3 = 36"]),
    ("The fee is $360,000 x 3/100 = $10,800.", ["$360,000 × 3/100 = $10,800"]),
    ("That is 350 puppies / 1400 puppies * 100% = 25%", ["350 ÷ 1400 × 100% = 25%"]),
    ("52 are members/robotics club members so 20+52 = 72 students", ["20 + 52 = 72"]),
    ("Thus 73 + 36 + 22 + T = 131 + T = 219 toys.", ["73 + 36 + 22 = 131"]),
    ("He receives 48=48 emails", []),
    ("We get 2x+30=70", []),
    ("So 2352/60=39 hours", []),  # a silent floor does not check out
])
def test_find_calcs(line, calcs):
  assert [tmpl.plain_calc(c) for c in tmpl.find_calcs(line)] == calcs


# ---------------------------------------------------------------------- JSONL


def write_jsonl(tmp_path, lines):
  path = tmp_path / "rationales.jsonl"
  path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
  return path


Q1, Q2 = Question("q1", "1 + 1?", "2"), Question("q2", "2 + 2?", "4")


def test_jsonl_teacher_looks_up_by_question_and_perspective(tmp_path):
  path = write_jsonl(tmp_path, [
      {"question_id": "q1", "perspective": "socratic", "rationale": "Why? 1 + 1 = 2.",
       "teacher": "big-model"},
      {"question_id": "q1", "perspective": "planning", "rationale": "Plan: add.",
       "teacher": "big-model"},
      "",
      {"question_id": "q2", "perspective": "socratic", "rationale": None},
  ])
  teacher = JsonlTeacher(path)
  assert isinstance(teacher, Teacher) and teacher.name == "big-model"
  requests = [TeacherRequest(Q1, "planning", ""), TeacherRequest(Q1, "socratic", ""),
              TeacherRequest(Q1, "analogy", ""), TeacherRequest(Q2, "socratic", ""),
              TeacherRequest(Q2, "planning", "")]
  assert teacher.generate(requests) == ["Plan: add.", "Why? 1 + 1 = 2.", None, None, None]
  assert teacher.teacher_of(requests[0]) == "big-model"
  assert teacher.teacher_of(requests[3]) == "big-model"  # no own teacher: the shared name


def test_jsonl_teacher_name_with_mixed_teachers(tmp_path):
  path = write_jsonl(tmp_path, [
      {"question_id": "q1", "perspective": "socratic", "rationale": "a", "teacher": "m1"},
      {"question_id": "q1", "perspective": "planning", "rationale": "b", "teacher": "m2"}])
  teacher = JsonlTeacher(path)
  assert teacher.name == "jsonl:rationales.jsonl"
  assert teacher.teacher_of(TeacherRequest(Q1, "planning", "")) == "m2"
  assert JsonlTeacher(path, name="mine").name == "mine"


@pytest.mark.parametrize("bad,message", [
    ('{"question_id": "q1", "perspective": ', "line 2: malformed line"),
    ('["q1", "socratic", "x"]', "line 2: expected a JSON object"),
    ('{"perspective": "socratic", "rationale": "x"}', "line 2: field 'question_id'"),
    ('{"question_id": "q1", "perspective": "", "rationale": "x"}', "line 2: field 'perspective'"),
    ('{"question_id": "q1", "perspective": "socratic"}', "line 2: field 'rationale' is missing"),
    ('{"question_id": "q1", "perspective": "socratic", "rationale": 3}',
     "line 2: field 'rationale' must be"),
])
def test_jsonl_teacher_bad_lines(tmp_path, bad, message):
  good = {"question_id": "q0", "perspective": "socratic", "rationale": "fine"}
  path = write_jsonl(tmp_path, [good, bad])
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    JsonlTeacher(path)
  assert str(path) in str(e.value)


def test_jsonl_teacher_duplicate_names_both_lines(tmp_path):
  entry = {"question_id": "q1", "perspective": "socratic", "rationale": "x"}
  path = write_jsonl(tmp_path, [entry, dict(entry, perspective="planning"), dict(entry)])
  with pytest.raises(ValueError, match=r"line 3: duplicate entry .*'q1'.*'socratic' "
                                       r"\(first on line 1\)"):
    JsonlTeacher(path)


# ------------------------------------------------------------------------- HF


@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}  # no pad token: eos is used


def save_tiny_model(path, chat_template=None):
  """A random 2-layer LlamaForCausalLM and a byte-level BPE trained in-process."""
  import torch
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL.values()),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(["Tom has 3 apples and buys 4 more.", "Question: how many? Answer:"]
                          * 4, trainer=trainer)
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
  if chat_template:
    tokenizer.chat_template = chat_template
  tokenizer.save_pretrained(path)
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      bos_token_id=0, eos_token_id=1))
  model.save_pretrained(path)
  return str(path)


PROMPTS = ["Tom has 3 apples.", "Question: how many apples does Tom have if he buys 4 more?",
           "Answer:", "Tom buys 4 more apples and has how many?"]


def test_hf_teacher_batched_equals_unbatched_greedy(tmp_path):
  from mind_jax.data.teachers.hf import HFTeacher
  model_dir = save_tiny_model(tmp_path / "tiny")
  requests = [TeacherRequest(Q1, "socratic", p) for p in PROMPTS]
  batched = HFTeacher(model_dir, max_new_tokens=6, temperature=0.0, batch_size=3)
  assert isinstance(batched, Teacher)  # it left-pads the batch itself (chat_prompt_ids rows)
  assert batched.tokenizer.pad_token == "<|eos|>"
  got = batched.generate(requests)
  assert len(got) == len(PROMPTS)
  single = HFTeacher(model_dir, max_new_tokens=6, temperature=0.0, batch_size=1)
  assert got == single.generate(requests)
  print("tiny model generations:", got)
  assert any(got)  # a random model still says something
  for text, prompt in zip(got, PROMPTS):
    assert text is None or not text.startswith(prompt)  # new text only


def test_hf_teacher_uses_the_chat_template(tmp_path):
  from mind_jax.data.teachers.hf import HFTeacher
  template = "{% for m in messages %}<|bos|>User: {{ m['content'] }}\n{% endfor %}Assistant:"
  teacher = HFTeacher(save_tiny_model(tmp_path / "chat", template), max_new_tokens=3,
                      temperature=0.7, top_p=0.9, seed=3)
  from mind_jax.data import encode
  ids = encode.chat_prompt_ids(teacher.tokenizer, "Hi?")  # what _generate_batch sends
  assert teacher.tokenizer.decode(ids) == "<|bos|>User: Hi?\nAssistant:"
  requests = [TeacherRequest(Q1, "socratic", p) for p in PROMPTS[:2]]
  assert teacher.generate(requests) == teacher.generate(requests)  # seeded sampling


def test_train_and_eval_see_the_same_prompt_tokens():
  """SFT, MIND records and evaluation build the student's prompt with one function: with a
  chat template, SFT sequences use it too (they once ignored it while eval applied it)."""
  from mind_jax import tokenizer as tokenizer_lib
  from mind_jax.data import encode, prompt, sft
  tokenizer = tokenizer_lib.train_bpe(["Question: What is 2 + 3?\nAnswer: 2 + 3 = 5.",
                                       "user: assistant:"] * 20, 300)
  tokenizer.chat_template = ("{% for m in messages %}<|bos|>{{ m['role'] }}: "
                             "{{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}assistant:{% endif %}")
  example = dict(id="e", question="What is 2 + 3?", rationale="2 + 3 = 5.", answer="5")
  arrays = sft.encode_examples(tokenizer, [example], 64)
  row, scored = arrays["input_ids"][0], arrays["loss_mask"][0]
  sft_prompt = row[:int(np.argmax(scored))].tolist()  # everything before the first scored token
  eval_prompt = encode.prompt_ids(tokenizer, example["question"])  # eval/run.generate_answers
  slot = encode.encode_slot(tokenizer, example["question"], example["rationale"], "5", 64)
  assert sft_prompt == eval_prompt == slot["input_ids"][:len(eval_prompt)].tolist()
  assert "assistant:" in tokenizer.decode(eval_prompt)  # the chat template was applied
  assert arrays["attention_mask"][0].sum() == slot["length"]
  assert not hasattr(prompt, "encode_sequence") and not hasattr(prompt, "SequenceTooLong")
