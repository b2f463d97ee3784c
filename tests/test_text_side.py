"""One text side for every path that generates: `tuneforge generate/chat` (inference.load +
generate/stream), `tuneforge compare` (its loaded base model, answering with generate_batch) and
the server (the catalog's text side, answered by the engine) stop on the same token set for the
same model, including an extra end-of-turn id that only the model's generation_config.json names.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from helpers import good_examples, write_lines

from tuneforge.data.conversation import Message
from tuneforge.models.text import DEFAULT_CONTEXT, auto_max_seq_len, load_text_side

MESSAGES = [Message("user", "What is the capital of country number 3?")]
MAX_TOKENS = 8


def test_auto_max_seq_len_is_the_context_capped_at_the_default():
    assert auto_max_seq_len(None) == DEFAULT_CONTEXT == 2048
    assert auto_max_seq_len(512) == 512
    assert auto_max_seq_len(8192) == 2048


def test_the_text_side_reads_the_context_and_stop_tokens_from_the_model_folder(
    tiny_model_dir, tmp_path
):
    text = load_text_side(str(tiny_model_dir))
    assert text.context_length == text.config_context == 2048  # the tiny model's config says so
    assert text.eos_ids == {text.tokenizer.eos_token_id}
    short = tmp_path / "short"
    shutil.copytree(tiny_model_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 512
    (short / "config.json").write_text(json.dumps(config))
    (short / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    text = load_text_side(str(short))
    assert text.context_length == text.config_context == 512
    assert text.eos_ids == {text.tokenizer.eos_token_id, 7}


@pytest.fixture(scope="module")
def extra_eos(tiny_model_dir, tmp_path_factory) -> tuple[Path, int]:
    """A copy of the tiny model whose generation_config.json adds one eos id: the first token the
    model answers MESSAGES with (not the tokenizer's eos), so every path must stop at once."""
    from tuneforge.inference.generate import generate
    from tuneforge.inference.load import load_for_inference

    plain = load_for_inference(str(tiny_model_dir))
    _, answer = generate(plain, MESSAGES, max_new_tokens=MAX_TOKENS)
    # Without the extra id the model runs on to the limit: a path that ignored it would too.
    assert len(answer) == MAX_TOKENS and answer[0] not in plain.text.eos_ids
    folder = tmp_path_factory.mktemp("extra-eos") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], answer[0]]
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder, answer[0]


def test_the_cli_compare_and_the_server_stop_on_the_same_tokens(extra_eos, tmp_path, isolated_home):
    from tuneforge.api.catalog import Catalog
    from tuneforge.eval.compare import CompareOptions, Comparison
    from tuneforge.inference.engine import Finished, InferenceEngine, SamplingParams, Target
    from tuneforge.inference.generate import generate, generate_batch, stream
    from tuneforge.inference.load import load_for_inference
    from tuneforge.jobs.store import Store

    folder, extra = extra_eos
    model = str(folder)

    # `tuneforge generate` / `tuneforge chat`
    cli = load_for_inference(model)
    expected = {cli.tokenizer.eos_token_id, extra}
    assert cli.text.eos_ids == expected
    assert generate(cli, MESSAGES, max_new_tokens=MAX_TOKENS)[1] == [extra]
    assert len("".join(stream(cli, MESSAGES, max_new_tokens=MAX_TOKENS))) <= 1

    # `tuneforge compare` (and `eval`): the comparison's base model, answering in a batch
    data = write_lines(tmp_path / "train.jsonl", good_examples(4))
    options = CompareOptions(train_file=data, test_file=data, out_dir=tmp_path / "out", model=model)
    compare = Comparison(options).base
    assert compare.text.eos_ids == expected
    prompt = compare.text.prompt_ids(MESSAGES)
    assert generate_batch(compare, [prompt], max_new_tokens=MAX_TOKENS) == [[extra]]

    # the server: the catalog's text side, answered by the engine
    served = Catalog(Store(tmp_path / "db.sqlite")).text_side(model)
    assert served.eos_ids == expected
    engine = InferenceEngine()
    engine.start()
    try:

        async def answer() -> list:
            generation = engine.submit(
                Target(model, model), served, prompt, SamplingParams(MAX_TOKENS, 0.0)
            )
            events = [(await generation.events.get())[1]]
            while not isinstance(events[-1], Finished):
                events.append((await generation.events.get())[1])
            return events

        # no text event: the eos is not sent as text, only counted and kept in the answer's tokens
        assert asyncio.run(answer()) == [Finished("stop", 1, (extra,))]
    finally:
        engine.stop()
