"""Language models for the objective tests: the bundled stories260k when present, else a tiny random Llama
with a byte-level BPE tokenizer trained on a few bundled C4 documents (offline, ~1 s)."""
from pathlib import Path

import pytest
import torch

import compress

BUNDLED = Path(compress.__file__).parent / "_bundled" / "stories260k" / "config.json"


def train_tokenizer(vocab: int = 512, source: str = "c4"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(compress.texts(source)[:30], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def random_llama(vocab: int = 512, seed: int = 0, max_positions: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=max_positions,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():   # HF's init gives near-uniform outputs; sharper ones make KL / ppl informative
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """(random model, tokenizer): controlled and always available."""
    return random_llama(), tokenizer


@pytest.fixture(scope="session")
def lm(tiny_lm):
    """(model, tokenizer, is_bundled): the real bundled model when it exists, else the tiny random one."""
    if BUNDLED.is_file():
        model, tok = compress.load_model("stories260k")
        return model, tok, True
    return tiny_lm[0], tiny_lm[1], False
