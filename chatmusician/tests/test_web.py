"""``chatmusician web``: the Gradio page started on a free localhost port and asked for a tune over HTTP."""

from __future__ import annotations

import argparse
import shutil
import socket
import wave
from urllib.parse import unquote

import pytest
import torch

from chatmusician.web import HostError, check_host, compose_prompt

TUNES = ["X:1\nL:1/8\nM:6/8\nK:G\n|:GAB ~c2d|e>dc (3BAG F|\nG3 G3:|\n", "X:1\nL:1/16\nM:3/4\nK:Ador\nA4 B2c2 d4||e8 z4|]\n",
         "X:1\nL:1/4\nM:C|\nK:Bb\n^F/2 _E// =D3/2 d3/4 c'2 C,2 z12 z16 z6 z8 ::"]


def _outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the one used to reach other hosts), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained 1-layer LLaMA with a small BPE trained on a few tunes, saved as a local model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import prompt, train_tokenizer

    tok = train_tokenizer([prompt(compose_prompt("", "G major", "6/8", "1/8", 4)) + t for t in TUNES] * 3, 120)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    d = tmp_path_factory.mktemp("web_model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_compose_prompt_and_host_check():
    p = compose_prompt("", "A dorian", "3/4", "", 8.0, " reel ")
    assert p == "Create sheet music in ABC notation from the provided text.\nKey: A dorian\nMeter: 3/4\nBars: 8\nRhythm: reel"
    assert compose_prompt("Write a jig", bars=0) == "Write a jig"
    assert check_host("127.0.0.1", False) == "127.0.0.1" and check_host("0.0.0.0", True) == "0.0.0.0"
    with pytest.raises(HostError, match="--allow-remote"):
        check_host("0.0.0.0", False)


def test_cli_refuses_a_public_host_before_loading(tmp_path, capsys):
    from chatmusician.cli import main

    # the model folder does not exist: the host is refused first, in one line
    assert main(["web", "--model", str(tmp_path / "nope"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chatmusician web: error: --host 0.0.0.0: the web demo binds 127.0.0.1")


@pytest.mark.skipif(not (shutil.which("abcm2ps") and shutil.which("abc2midi") and shutil.which("fluidsynth")),
                    reason="abcm2ps/abcmidi/fluidsynth not installed (shared/scripts/setup.sh)")
def test_page_answers_one_request_with_reply_audio_and_sheet(model_dir, tmp_path):
    """Start the app on a free 127.0.0.1 port, call /compose over HTTP with gradio_client: the constrained reply is a
    valid tune in the asked key/meter/bars, and the .wav and .svg come back; an impossible key is refused by name."""
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from musiccore.abc import validate

    from chatmusician.chat import extract_tunes
    from chatmusician.chat_cli import ChatSession
    from chatmusician.cli import build_parser
    from chatmusician.web import WebChat, launch

    import anyio

    # anyio imports its file helpers lazily, on the first file the server sends; pytest rewrites anyio's modules (it is
    # a pytest plugin), and that rewrite racing in the server's worker thread can fail ("AST constructor recursion
    # depth mismatch", CPython 3.11): import them here, in the main thread
    assert anyio.open_file is not None
    with socket.socket() as s:  # a free port on the loopback interface
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = build_parser().parse_args(["web", "--model", str(model_dir), "--out", str(tmp_path / "out"),
                                      "--max-new-tokens", "60", "--port", str(port)])
    assert isinstance(args, argparse.Namespace) and args.host == "127.0.0.1"
    args.temperature = 1.0
    app = launch(WebChat(ChatSession(args)), args.host, args.port, block=False)
    try:
        assert app.server_name == "127.0.0.1" and app.server_port == port
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        reply, report, wav, svg, files = client.predict(
            "", "E minor", "2/4", "1/8", 2, "", True, api_name="/compose")
        tunes = extract_tunes(reply)
        assert len(tunes) == 1 and "\nK:Em\n" in tunes[0].abc and "\nM:2/4\n" in tunes[0].abc
        res = validate(tunes[0].abc)
        assert res.ok and res.n_bars == 2, (reply, res.errors)
        assert "valid" in report and "INVALID" not in report
        with wave.open(wav) as w:  # the rendered audio, downloaded over HTTP
            assert w.getnframes() > 0
        # gr.Image sends an SVG inline, as a data URL of the engraved sheet
        assert svg["url"].startswith("data:image/svg+xml,") and "<svg" in unquote(svg["url"]) and "</svg>" in unquote(svg["url"])
        assert sorted(f.rsplit(".", 1)[1] for f in files) == ["abc", "mid", "musicxml", "svg", "wav"]
        assert (tmp_path / "out").is_dir() and len(list((tmp_path / "out").glob("web-*.json"))) == 1
        with pytest.raises(Exception, match="Key: 'H major' is not a key"):
            client.predict("", "H major", "2/4", "1/8", 2, "", True, api_name="/compose")
        # constrained off: the untrained model writes no valid ABC, so there is nothing to play or show
        reply, report, wav, svg, files = client.predict(
            "", "E minor", "2/4", "1/8", 2, "", False, api_name="/compose")
        assert not any(validate(t.abc).ok for t in extract_tunes(reply))
        assert ("no ABC" in report or "INVALID" in report) and wav is None and svg is None
        # bound to the loopback interface only: another address of this machine refuses the connection
        ip = _outside_address()
        if ip is not None:
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
                pass
    finally:
        app.close()
