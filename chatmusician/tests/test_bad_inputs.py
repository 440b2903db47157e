"""Bad input through ChatMusician's public commands: typed errors that name the file/field/row and the reason,
batch commands that skip and report and go on, exit codes (README table "bad input -> behaviour -> exit code").

Concrete cases come from ``tests/bad_inputs/``; hypothesis property tests cover inputs with structure (model
``config.json``, MusicTheoryBench rows, model replies holding ABC, prompts into the constrained decoder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from musiccore.testing import property_settings

from chatmusician.cli import main
from chatmusician.model_folder import ModelFolderError, check_config, check_model_folder
from chatmusician.mtb import MTBFormatError, load_mtb

BAD = Path(__file__).parent / "bad_inputs"
PROMPT = "Key: G major\nMeter: 6/8"
TUNE = "X:1\nL:1/8\nM:6/8\nK:G\n|:GAB c2d|e>dc BAG|\nG3 G3|]\n"
# 25 examples per property in the default suite, 20x that with --runslow / MUSIC_RUN_SLOW=1
QUICK = property_settings(25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A good tiny model folder (1-layer LLaMA, BPE tokenizer) to corrupt copies of."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import prompt, train_tokenizer

    tok = train_tokenizer([prompt(PROMPT) + TUNE] * 5, 100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    d = tmp_path_factory.mktemp("bad_inputs_model") / "good"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _copy(model_dir: Path, tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    shutil.copytree(model_dir, d)
    return d


def _one_error_line(capsys, command: str) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert err and err[-1].startswith(f"chatmusician {command}: error: "), err
    assert not any("Traceback" in ln for ln in err)
    return err[-1]


# ------------------------------------------------------------------------------------------------ model folders

CONFIG_CASES = {
    "heads_zero.json": "field 'num_attention_heads' must be a positive integer, got 0",
    "hidden_size_string.json": "field 'hidden_size' must be a positive integer, got 'thirty-two'",
    "vocab_negative.json": "field 'vocab_size' must be a positive integer, got -5",
    "heads_not_dividing.json": "field 'hidden_size' 32 is not a multiple of 'num_attention_heads' 3",
    "bert_masked_lm.json": "field 'architectures' is \\['BertForMaskedLM'\\], no causal language model class",
    "eps_string.json": "field 'rms_norm_eps' must be a positive number",
    "vocab_disagrees_with_weights.json": "field 'vocab_size' is 10 but the weights' model.embed_tokens.weight",
    "not_json.json": "not valid JSON \\(.* at line 3 column 1\\)",
    "list.json": "must hold a JSON object, got list",
    "no_model_type.json": "field 'model_type' missing",
    "layers_bool.json": "field 'num_hidden_layers' must be a positive integer, got True",
}


def _apply_config(folder: Path, case: Path) -> None:
    """Lay a bad_inputs/model_config file over the folder's config.json (replace it when not a JSON object)."""
    text = case.read_text()
    try:
        over = json.loads(text)
    except json.JSONDecodeError:
        over = None
    if isinstance(over, dict):
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(over)
        if "model_type" not in over:
            cfg.pop("model_type", None)  # no_model_type.json: the field is removed, not kept from the good file
        text = json.dumps(cfg)
    (folder / "config.json").write_text(text)


def test_every_model_config_case_has_a_file():
    assert sorted(p.name for p in (BAD / "model_config").glob("*.json")) == sorted(CONFIG_CASES)


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_json_names_file_and_field(model_dir, tmp_path, case):
    """Wrong types, zero heads, another architecture, invalid JSON: ModelFolderError naming config.json and the
    field, before transformers sees the folder (today's tracebacks: ZeroDivisionError, StrictDataclass..., OSError)."""
    from chatmusician.generate import load_model

    d = _copy(model_dir, tmp_path)
    _apply_config(d, BAD / "model_config" / case)
    with pytest.raises(ModelFolderError, match=f"{d / 'config.json'}: {CONFIG_CASES[case]}"):
        check_model_folder(d)
    with pytest.raises(ModelFolderError, match=CONFIG_CASES[case]):
        load_model(d)


@pytest.mark.parametrize("command", ["chat", "eval", "web"])
def test_cli_bad_model_folder_is_one_line_exit_2(model_dir, tmp_path, capsys, command):
    d = _copy(model_dir, tmp_path)
    _apply_config(d, BAD / "model_config" / "heads_zero.json")
    argv = {"chat": ["chat", "--model", str(d), "--out", str(tmp_path / "o"), "--no-render", PROMPT],
            "eval": ["eval", "--model", str(d), "--mtb", str(BAD / "mtb_rows")],
            "web": ["web", "--model", str(d), "--out", str(tmp_path / "o"), "--port", "0"]}[command]
    if command == "web":
        pytest.importorskip("gradio")
    assert main(argv) == 2
    line = _one_error_line(capsys, command)
    assert f"{d / 'config.json'}: field 'num_attention_heads' must be a positive integer" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing written


def test_folder_level_corruptions(model_dir, tmp_path):
    """Missing/truncated weights, missing or broken tokenizer, a shard index naming a missing shard, a checkpoint
    whose weights belong to another architecture."""
    from chatmusician.generate import load_model

    def bad(name, change, match):
        d = _copy(model_dir, tmp_path, name)
        change(d)
        with pytest.raises(ModelFolderError, match=match):
            load_model(d)

    bad("noweights", lambda d: (d / "model.safetensors").unlink(), "no weights")
    bad("trunc", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:200]),
        r"model.safetensors: not a readable safetensors file")
    bad("empty", lambda d: (d / "model.safetensors").write_bytes(b""), r"model.safetensors: not a readable")
    bad("notok", lambda d: [p.unlink() for p in d.glob("tokenizer*")], r"no tokenizer \(tokenizer.json")
    bad("badtok", lambda d: (d / "tokenizer.json").write_text("{"), r"tokenizer.json: not valid JSON")

    def index_missing_shard(d):
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "gone.safetensors"}}))
    bad("index", index_missing_shard, r"shard 'gone.safetensors' listed in 'weight_map' is missing")

    def other_arch(d):  # a causal LM type whose weight names are not these (GPT-2's): nothing would load
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=32, n_layer=1, n_head=2)
        (d / "config.json").write_text(json.dumps(cfg))
    bad("gpt2", other_arch, r"the weights do not fit config.json \(GPT2LMHeadModel\): \d+ tensors missing")



def test_tokenizer_larger_than_embedding(model_dir, tmp_path, capsys):
    """A consistent checkpoint whose embedding is smaller than its tokenizer (another model's tokenizer): chat and
    eval refuse it before generating (ids past the embedding would fail mid-run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = _copy(model_dir, tmp_path)
    n = json.loads((d / "config.json").read_text())["vocab_size"]
    LlamaForCausalLM(LlamaConfig(vocab_size=n - 10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64)).save_pretrained(d)
    for argv in (["chat", "--model", str(d), "--out", str(tmp_path / "o"), "--no-render", PROMPT],
                 ["eval", "--model", str(d), "--mtb", str(BAD / "mtb_rows")]):
        assert main(argv) == 2
        assert f"{d}: the tokenizer has {n} tokens but the model embeds only {n - 10}" in _one_error_line(capsys, argv[0])


def test_adapter_folder_errors(model_dir, tmp_path, capsys):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{")
    with pytest.raises(ModelFolderError, match=r"adapter_config.json: not valid JSON"):
        check_model_folder(d)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/no/such/base"}))
    (d / "adapter_model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    with pytest.raises(ModelFolderError, match=r"field 'base_model_name_or_path' = '/no/such/base' is not a local"):
        check_model_folder(d)
    # export: the same message, exit 2, nothing written
    assert main(["export", "--adapter", str(d), "--out", str(tmp_path / "merged")]) == 2
    assert "'/no/such/base' is not a local model folder" in _one_error_line(capsys, "export")
    assert not (tmp_path / "merged").exists()
    assert main(["export", "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "merged")]) == 2
    assert "no adapter_config.json" in _one_error_line(capsys, "export")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(model_dir)}))
    (tmp_path / "exists").mkdir()
    assert main(["export", "--adapter", str(d), "--out", str(tmp_path / "exists")]) == 2
    assert "exists; choose a new folder" in _one_error_line(capsys, "export")


@QUICK
@given(st.fixed_dictionaries({}, optional={
    f: st.one_of(st.integers(-3, 70), st.floats(-1, 70), st.just(float("nan")), st.booleans(), st.none(),
                 st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2))
    for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "max_position_embeddings", "rms_norm_eps")}),
    st.sampled_from(["llama", "mistral", "bert", "", 7, None]))
def test_config_property_typed_error_or_buildable(tmp_path_factory, fields, model_type):
    """Any config.json: ModelFolderError, or a config transformers builds a model from (on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("cfg")
    cfg = {**({"model_type": model_type} if model_type is not None else {}), **fields}
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        check_config(d / "config.json")
    except ModelFolderError as e:
        assert str(e).startswith(f"{d / 'config.json'}: ")
        return
    conf = AutoConfig.from_pretrained(d)
    with torch.device("meta"):
        AutoModelForCausalLM.from_config(conf)


def test_bad_generate_section_and_sampling_flags(model_dir, tmp_path, capsys):
    d = _copy(model_dir, tmp_path)
    shutil.copy(BAD / "chatmusician_json_bad_generate.json", d / "chatmusician.json")
    assert main(["chat", "--model", str(d), "--out", str(tmp_path / "o"), "--no-render", PROMPT]) == 2
    assert (f"{d / 'chatmusician.json'}: field 'config.generate.temperature' must be a number"
            in _one_error_line(capsys, "chat"))
    # sampling flags are checked before the model folder is even looked at (the folder does not exist)
    for flag, value, why in (("--max-new-tokens", "0", ">= 1"), ("--top-p", "1.5", "in (0, 1]"),
                             ("--temperature", "-1", "> 0")):
        assert main(["chat", "--model", str(tmp_path / "nope"), flag, value, PROMPT]) == 2
        assert f"{flag} " in (line := _one_error_line(capsys, "chat")) and why in line


# ------------------------------------------------------------------------------------------------ prompts, batch


@pytest.mark.parametrize("text", ["", "   \n\t", "Key: H major", "Meter: 7/0", "Bars: 0"])
def test_bad_prompt_exit_2_before_loading(tmp_path, capsys, text):
    """An empty or impossible prompt fails with the field named, before the (here missing) model is loaded."""
    assert main(["chat", "--model", str(tmp_path / "nope"), text]) == 2
    line = _one_error_line(capsys, "chat")
    assert ("empty prompt" in line) if not text.strip() else (text.split(":")[0] + ":" in line)
    assert "model folder" not in line


def test_constrained_unsupported_value_is_one_line(model_dir, tmp_path, capsys):
    """A real meter the constrained decoder cannot force: refused by name before generating, exit 2."""
    assert main(["chat", "--model", str(model_dir), "--constrained", "--out", str(tmp_path / "o"), "--no-render",
                 "--max-new-tokens", "64", "Key: G major\nMeter: 5/4"]) == 2
    assert "meter '5/4' is not one the constrained decoder supports" in _one_error_line(capsys, "chat")
    assert not list((tmp_path / "o").glob("*.json"))  # no reply record written


def test_batch_skips_bad_records_and_goes_on(model_dir, tmp_path, capsys):
    """bad_inputs/batch.jsonl: 2 good records are answered; every bad line (not JSON, not UTF-8, empty or impossible
    prompt, no prompt, bad history, repeated id, an id whose file name collides) is reported by line, exit 0."""
    out = tmp_path / "o"
    assert main(["chat", "--model", str(model_dir), "--batch", str(BAD / "batch.jsonl"), "--out", str(out),
                 "--no-render", "--max-new-tokens", "6"]) == 0
    assert "2 replies" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "replies.jsonl").read_text().splitlines()]
    answered = [r for r in rows if "reply" in r]
    assert sorted(r["id"] for r in answered) == ["ok/2", "ok1"]
    errors = " | ".join(r["error"] for r in rows if "error" in r)
    for line_no, why in ((2, "not JSON"), (3, "empty prompt"), (4, "Meter"), (5, "no 'prompt'"), (6, "no 'prompt'"),
                         (7, "not UTF-8"), (8, "field 'history'"), (9, "field 'id' 'ok1' repeats"),
                         (12, "field 'history'"), (13, "field 'id' ['list'] must be text")):
        assert f"batch.jsonl:{line_no}: {why}" in errors, (line_no, errors)
    assert "id 'ok_2' has the same file name as id 'ok/2'" in errors
    assert sorted(p.name for p in out.glob("*.json")) == ["ok1.json", "ok_2.json"]
    assert json.loads((out / "ok_2.json").read_text())["id"] == "ok/2"  # the first of the colliding ids kept


def test_batch_with_nothing_usable_is_one_line(tmp_path, capsys):
    """A missing batch file, or one whose every record is bad: exit 2 before the model is loaded (here: missing)."""
    assert main(["chat", "--model", str(tmp_path / "nope"), "--batch", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in _one_error_line(capsys, "chat")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(ln + b"\n" for ln in (BAD / "batch.jsonl").read_bytes().splitlines()[1:8]))
    assert main(["chat", "--model", str(tmp_path / "nope"), "--batch", str(bad)]) == 2
    assert f"{bad}: no usable record (7 skipped)" in _one_error_line(capsys, "chat")


def test_record_ids_cannot_escape_the_output_folder():
    from chatmusician.chat_cli import _safe

    for rid in ("..", "../../etc/x", "/abs/path", ".hidden", "", "a\\b"):
        name = _safe(rid)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")


# ------------------------------------------------------------------------------------------------ MusicTheoryBench

MTB_CASES = {
    "missing_answer.jsonl": r"row 2 \(id 101\): missing field 'answer'",
    "not_json.jsonl": r"row 2: not JSON",
    "bad_utf8.jsonl": r"row 2: not UTF-8 text",
    "options_list.jsonl": r"row 2 \(id 104\): field 'options' must map A, B, C and D",
    "answer_not_a_letter.jsonl": r"row 2 \(id 105\): field 'answer' must be one of A-D, got 'E'",
    "stem_number.jsonl": r"row 2 \(id 106\): field 'stem' must be text, got int",
    "row_is_list.jsonl": r"row 2: not an object",
    "truncated.parquet": r": not a readable parquet file \(ArrowInvalid",
}


@pytest.mark.parametrize("case", sorted(MTB_CASES))
def test_mtb_bad_file_strict_names_file_and_row(tmp_path, case):
    shutil.copy(BAD / "mtb_rows" / case, tmp_path / case)
    with pytest.raises(MTBFormatError, match=f"{tmp_path / case}.*{MTB_CASES[case]}"):
        load_mtb(tmp_path)


def test_mtb_eval_skips_bad_rows_and_scores_the_rest(model_dir, capsys):
    """``eval --mtb`` over the whole bad_inputs folder: 7 files x 2 good rows scored, 8 bad rows/files skipped and
    listed (in the log and under ``skipped_rows``), exit 0."""
    assert sorted(p.name for p in (BAD / "mtb_rows").iterdir()) == sorted(MTB_CASES)
    skipped: list[str] = []
    data = load_mtb(BAD / "mtb_rows", skipped)
    assert len(data["test"]) == 14 and len(skipped) == 8
    assert main(["eval", "--model", str(model_dir), "--mtb", str(BAD / "mtb_rows"), "--batch-size", "4"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out[cap.out.index("{"):])
    assert res["all_zero_shot"]["n"] == 14 and len(res["skipped_rows"]) == 8
    for case, why in MTB_CASES.items():
        assert any(case in m for m in res["skipped_rows"]), case
        assert f"skipped {BAD / 'mtb_rows' / case}" in cap.err


ROW_FIELD = st.one_of(st.text(max_size=6), st.integers(-2, 2), st.none(), st.booleans(),
                      st.lists(st.text(max_size=2), max_size=4),
                      st.dictionaries(st.sampled_from("ABCDE"), st.one_of(st.text(max_size=3), st.integers()), max_size=5))


@QUICK
@given(st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={f: ROW_FIELD for f in ("id", "stem", "options", "subject", "answer", "split",
                                                                 "abc_score")}),
    st.fixed_dictionaries({"id": st.integers(0, 9), "stem": st.text(min_size=1, max_size=8).filter(str.strip),
                           "options": st.fixed_dictionaries({x: st.text(max_size=3) for x in "ABCD"}),
                           "subject": st.sampled_from(["knowledge", "reasoning"]), "answer": st.sampled_from("ABCD")}),
    st.integers(), st.text(max_size=5)), min_size=1, max_size=6))
def test_mtb_rows_property_typed_error_or_valid(tmp_path_factory, rows):
    """Any jsonl of rows: strict loading gives MTBFormatError naming a row, or rows that score; skipping loading
    never raises and accounts for every line (kept + skipped)."""
    d = tmp_path_factory.mktemp("mtb")
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        data = load_mtb(d)
    except MTBFormatError as e:
        assert f"{d / 'test.jsonl'} row " in str(e)
    else:
        for r in data["test"] + data["dev"]:
            assert r["answer"] in "ABCD" and len(r["answer"]) == 1 and all(isinstance(r["options"][x], str) for x in "ABCD")
            assert isinstance(r["stem"], str) and r["stem"].strip()
    skipped: list[str] = []
    data = load_mtb(d, skipped)
    assert sum(len(v) for v in data.values()) + len(skipped) == len(rows)


# ------------------------------------------------------------------------------------------------ replies (ABC)

REPLY_CASES = {  # file -> (tunes, valid per tune); every tune record carries its reason when invalid
    "truncated_mid_bar.txt": (1, [True]),
    "wrong_bar_lengths.txt": (1, [False]),
    "unbalanced_brackets.txt": (1, [False]),
    "no_key_line.txt": (1, [False]),
    "zero_lengths.txt": (1, [False]),
    "only_headers_and_barlines.txt": (3, [False, False, False]),
    "prose_only.txt": (0, []),
    "control_and_unicode.txt": (1, [False]),
    "absurd_meter_and_length.txt": (1, [False]),  # M:999999999/1 once grew past 4 GB: bounded by musiccore.abc now
    "impossible_key.txt": (1, None),  # K:H is musiccore's call; only "no crash, a record" is asserted here
}


def test_every_reply_case_has_a_file():
    assert sorted(p.name for p in (BAD / "replies").glob("*.txt")) == sorted(REPLY_CASES)


@pytest.mark.parametrize("case", sorted(REPLY_CASES))
def test_malformed_replies_are_recorded_not_raised(tmp_path, case):
    """chat/web rendering and eval scoring of a malformed reply: a record (invalid, with the reason, renderer
    failures listed), never an exception; the .abc is always written."""
    from chatmusician.chat import process_reply
    from chatmusician.evaluate import score_reply

    text = (BAD / "replies" / case).read_text()
    rec = process_reply(text, tmp_path / "t", hit_budget=False, render=True, audio=False)
    n, valid = REPLY_CASES[case]
    assert rec["n_tunes"] == n
    if valid is not None:
        assert [t["valid"] for t in rec["tunes"]] == valid
    for t in rec["tunes"]:
        assert t["valid"] or t["errors"]
        assert Path(t["files"]["abc"]).read_text() == t["abc"]
        assert {"svg", "mid", "musicxml"} <= set(t["files"]) | set(t["render_errors"])  # each renderer: file or why
    s = score_reply(text, "G", "6/8")
    assert s["found"] == (n > 0) and isinstance(s["valid"], bool)
    if n and valid is not None and not any(valid):
        assert not s["valid"]
    if n == 0:
        assert rec["note"] == "no ABC in the reply"


_ABCISH = st.sampled_from(list("ABCDEFGabcdefgz,'^_=/23|:[]()<>~-\n XKLMT") + ["X:1\n", "K:", "M:", "L:", "|]", "\n\n"])


@QUICK
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 3), st.lists(_ABCISH, max_size=4)), max_size=6),
       st.text(max_size=20))
def test_reply_property_record_never_exception(edits, prose):
    """A valid tune mutated (deletions, insertions of ABC characters and header fragments) and wrapped in prose:
    extraction, validation and scoring give a record (valid, or invalid with reasons), never an exception."""
    from chatmusician.chat import process_reply
    from chatmusician.evaluate import score_reply

    text = TUNE
    for pos, cut, ins in edits:
        p = pos % (len(text) + 1)
        text = text[:p] + "".join(ins) + text[p + cut:]
    reply = prose + "\n" + text
    rec = process_reply(reply, None)
    assert rec["n_tunes"] == len(rec["tunes"])
    for t in rec["tunes"]:
        assert isinstance(t["valid"], bool) and (t["valid"] or t["errors"])
    s = score_reply(reply, "G", "6/8")
    assert set(s) >= {"found", "parsed", "valid", "key_match", "meter_match"}


_FIELD_VALUES = {"Key": ["G major", "A dorian", "F# minor", "Bb", "H major", "", "C mixolydian", "Eb"],
                 "Meter": ["6/8", "4/4", "3/4", "C", "C|", "7/0", "5/4", "9/8", "2/2", "x"],
                 "Note Length": ["1/8", "1/16", "1/4", "1/3", "1/32", "0"],
                 "Bars": ["1", "4", "8", "16", "0", "300", "many"]}


@QUICK
@given(st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.integers(0, 9), max_size=4), st.text(max_size=30))
def test_prompt_into_constrained_decoder_typed_error_or_valid_tune(fields, free):
    """A prompt with any mix of header fields into the constrained decoder (what ``chat --constrained`` builds):
    PromptError / ValueError naming the field, or an automaton whose completion is a valid tune with the asked
    key/meter/unit and at most the asked bars."""
    from musiccore.abc import parse_header, validate

    from chatmusician.chat import PromptError, parse_request
    from chatmusician.chat_cli import ChatSession

    lines = [free.replace("\n", " ")]
    for name, k in fields.items():
        vals = _FIELD_VALUES[name]
        lines.append(f"{name}: {vals[k % len(vals)]}")
    text = "\n".join(lines)
    try:
        req = parse_request(text)
        auto = ChatSession.automaton(None, req)
    except PromptError as e:
        assert any(n in str(e) for n in ("empty", "Key", "Meter", "Note Length", "Bars"))
        return
    except ValueError as e:  # a real value the constrained decoder does not support: named
        assert any(w in str(e) for w in ("key", "meter", "unit"))
        return
    tune = auto.completion(auto.start())
    r = validate(tune)
    assert r.ok, (text, tune, r.errors)
    h = parse_header(tune)
    assert (req.meter is None or h["M"] == req.meter) and (req.unit is None or h["L"] == req.unit)
    assert req.key is None or h["K"] == req.key
    # the forced completion (token budget spent) may end early but never past the asked bar count (documented)
    assert 1 <= r.n_bars <= (req.bars or 64)
