"""Each default is written once: config.model, config.ta and config.lora hold the
dataclasses' defaults, and every from_config refuses a field its section does not have,
naming a close one."""
import ml_collections
import pytest

from mind_jax import mind_step
from mind_jax.config import default_config, default_data_config
from mind_jax.data.teachers import PERSPECTIVES
from mind_jax.models.decoder import DecoderConfig
from mind_jax.models.lora import META_KEYS, LoraConfig
from mind_jax.ta import TAConfig


def test_config_sections_are_the_dataclass_defaults():
  config = default_config()
  assert DecoderConfig.from_config(config.model) == DecoderConfig()
  assert TAConfig.from_config(config.ta) == TAConfig()
  assert LoraConfig.from_config(config.lora) == LoraConfig()
  assert default_data_config().perspectives.names == PERSPECTIVES


@pytest.mark.parametrize("build, section, typo, meant", [
    (DecoderConfig.from_config, "model", "num_layer", "num_layers"),
    (TAConfig.from_config, "ta", "synergi", "synergy"),
    (LoraConfig.from_config, "lora", "rnak", "rank"),
    (lambda c: mind_step.MindSettings.from_config(c, ["formal_symbolic"]), "mind",
     "inertia_muu", "inertia_mu"),
])
def test_from_config_refuses_an_unknown_field(build, section, typo, meant):
  values = default_config()[section].to_dict()
  values[typo] = values[meant]
  with pytest.raises(ValueError, match=rf"^unknown field {section}\.{typo}; "
                                       rf"did you mean {section}\.{meant}\?$"):
    build(ml_collections.ConfigDict(values))


def test_lora_from_config_reads_a_checkpoints_meta():
  """meta["lora"] is the config plus META_KEYS (the base the adapters apply to)."""
  lora_config = LoraConfig(rank=4, target_modules=("q_proj",))
  meta = dict(lora_config.to_dict(), **{key: "saved" for key in META_KEYS})
  assert LoraConfig.from_config(meta) == lora_config
