"""``chatmusician web``: a Gradio page over the chat API, bound to 127.0.0.1.

The page asks for a tune the way the training prompts do (an instruction plus ``Key:`` / ``Meter:`` / ``Note Length:``
/ ``Bars:`` / ``Rhythm:`` lines), with constrained decoding on or off per request, and shows the reply, a validation
line per tune (:func:`chatmusician.chat.describe`), an audio player for the rendered ``.wav``, the engraved ``.svg``
sheet and every written file (``.abc .mid .wav .musicxml .svg``). All the work is :class:`chatmusician.chat_cli.
ChatSession`'s: prompt checks, context check, generation, extraction, validation and rendering; this module only
builds the prompt from the form and lays out the results.

The server listens on 127.0.0.1 unless ``--host`` names another address *and* ``--allow-remote`` is given (anyone who
reaches the port can run the model and read the files it wrote). Gradio's share links and analytics are off.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import os
import time
from pathlib import Path

from .chat import PromptError, describe, parse_request

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
UNITS = ("", "1/8", "1/16", "1/4")  # "" = not asked


class HostError(ValueError):
    """``--host`` names a non-loopback address without ``--allow-remote``."""


def check_host(host: str, allow_remote: bool) -> str:
    """The address to bind: loopback always; any other only with ``allow_remote`` (raises :class:`HostError`)."""
    if host in LOOPBACK or allow_remote:
        return host
    raise HostError(f"--host {host}: the web demo binds 127.0.0.1 only; pass --allow-remote to serve on {host} "
                    "(anyone who reaches the port can run the model and read the files it writes)")


def compose_prompt(instruction: str, key: str = "", meter: str = "", unit: str = "", bars: float | int | None = None,
                   rhythm: str = "") -> str:
    """The user turn the form describes: the instruction (the training template's metadata instruction when empty),
    then one ``Field: value`` line per filled field, in the order ``chatmusician.data.metadata_prompt`` writes them.
    ``bars`` of 0/None means not asked. Values are not checked here (:func:`chatmusician.chat.parse_request` does)."""
    from .data import METADATA_INSTRUCTION

    lines = [instruction.strip() or METADATA_INSTRUCTION]
    n_bars = "" if bars in (None, "", 0) else (str(int(bars)) if float(bars) == int(bars) else str(bars))
    for name, value in (("Key", key), ("Meter", meter), ("Note Length", unit), ("Bars", n_bars), ("Rhythm", rhythm)):
        if str(value or "").strip():
            lines.append(f"{name}: {str(value).strip()}")
    return "\n".join(lines)


class WebChat:
    """One request of the page -> one :meth:`ChatSession.respond` call (model shared, requests served one at a time).

    Args:
        session: a loaded :class:`chatmusician.chat_cli.ChatSession`; its ``out`` folder receives every reply's files.
    """

    def __init__(self, session):
        self.session = session
        self._ids = itertools.count(1)

    def reply(self, instruction: str, key: str, meter: str, unit: str, bars, rhythm: str, constrained: bool):
        """Returns ``(reply text, validation markdown, wav path | None, svg path | None, [written files])``.

        Raises:
            PromptError / ContextError (as ``ValueError``): the prompt is empty or impossible, or too long.
        """
        text = compose_prompt(instruction, key, meter, unit, bars, rhythm)
        parse_request(text)  # impossible field: fail before touching the model
        # a per-request view of the session: same model, the request's constrained switch
        sess = copy.copy(self.session)
        sess.args = copy.copy(self.session.args)
        sess.args.constrained = bool(constrained)
        rid = f"web-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids):04d}"
        rec = sess.respond([{"id": rid, "prompt": text, "history": []}])[0]
        if "error" in rec:
            raise PromptError(rec["error"])
        log.info("%s: %d tunes (%d valid)%s", rid, rec["n_tunes"], sum(t["valid"] for t in rec["tunes"]),
                 ", constrained" if constrained else "")
        # the player and the sheet show the first tune that has them (a reply may hold several tunes)
        wav = next((t["files"]["wav"] for t in rec["tunes"] if "wav" in t["files"]), None)
        svg = next((t["files"]["svg"] for t in rec["tunes"] if "svg" in t["files"]), None)
        files = [p for t in rec["tunes"] for p in t["files"].values()]
        report = describe(rec).replace("\n", "  \n")  # markdown line breaks
        return rec["reply"], report, wav, svg, files


def build_app(chat: WebChat):
    """The Gradio Blocks of the page; the request endpoint is ``/compose`` (also callable with ``gradio_client``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .data import METADATA_INSTRUCTION

    def compose(instruction, key, meter, unit, bars, rhythm, constrained):
        try:
            return chat.reply(instruction, key, meter, unit, bars, rhythm, constrained)
        except ValueError as e:  # PromptError, ContextError: shown to the user, the server goes on
            raise gr.Error(str(e)) from e

    with gr.Blocks(title="ChatMusician", analytics_enabled=False) as app:
        gr.Markdown("## ChatMusician\nAsk for a tune; the reply's ABC is checked, played and engraved.")
        with gr.Row():
            with gr.Column():
                instruction = gr.Textbox(label="Instruction", value=METADATA_INSTRUCTION, lines=2)
                with gr.Row():
                    key = gr.Textbox(label="Key", value="G major", placeholder="G major, A dorian, F# minor")
                    meter = gr.Textbox(label="Meter", value="6/8", placeholder="6/8, 4/4, C")
                with gr.Row():
                    unit = gr.Dropdown(label="Note Length", choices=list(UNITS), value="1/8")
                    bars = gr.Number(label="Bars (0 = any)", value=8, precision=0, minimum=0, maximum=256)
                rhythm = gr.Textbox(label="Rhythm", value="", placeholder="jig, reel, hornpipe (optional)")
                constrained = gr.Checkbox(label="Constrained decoding (well-formed ABC, every bar exact)", value=True)
                go = gr.Button("Compose", variant="primary")
            with gr.Column():
                reply = gr.Textbox(label="Reply", lines=12)
                report = gr.Markdown()
                audio = gr.Audio(label="Audio (.wav)", type="filepath")
                sheet = gr.Image(label="Sheet (.svg)", type="filepath")
                # gradio 6 always passes a (default, empty) watermark and then warns on every SVG that it cannot
                # watermark one: a toast per request. No watermark = no warning (postprocess_image takes None).
                sheet.watermark = None
                files = gr.File(label="Files", file_count="multiple")
        go.click(compose, [instruction, key, meter, unit, bars, rhythm, constrained], [reply, report, audio, sheet, files],
                 api_name="compose")
    return app


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``chatmusician web`` (the model options are ``chat``'s)."""
    p.add_argument("--model", required=True, help="local model folder (full checkpoint or LoRA adapter)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder applied on top of --model")
    p.add_argument("--config", default=None, help="YAML whose generate: section sets the sampling defaults")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for replies and rendered tunes "
                   "(default <MUSIC_RUNS_DIR>/chatmusician/web)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; another one needs "
                   "--allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (the page has no login)")
    p.set_defaults(constrained=True, no_render=False, no_audio=False, batch=None, prompt=None, temperature=None,
                   top_k=None, top_p=None, repetition_penalty=None)


def launch(chat: WebChat, host: str = "127.0.0.1", port: int = 7860, allow_remote: bool = False, block: bool = True):
    """Start the server; returns the Gradio app (``block=False``: in a background thread, stop it with ``.close()``).

    Only the session's output folder is served besides Gradio's own cache (the reply files live there)."""
    host = check_host(host, allow_remote)
    app = build_app(chat)
    app.queue(default_concurrency_limit=1)  # one generation at a time: the model and the torch seed are shared
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block,
               allowed_paths=[str(Path(chat.session.out).resolve())], show_error=True)
    return app


def run_web(args) -> int:
    """Entry point of ``chatmusician web``: check the host, load the model once, serve until interrupted."""
    check_host(args.host, args.allow_remote)  # before loading the model
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise ValueError("gradio is not installed: pip install 'chatmusician[web]'") from e
    if args.out is None:
        from musiccore.runs import runs_root

        args.out = str(runs_root() / "chatmusician" / "web")
    from .chat_cli import ChatSession

    session = ChatSession(args)
    log.info("serving on http://%s:%d (files in %s)", args.host, args.port, session.out)
    launch(WebChat(session), args.host, args.port, args.allow_remote, block=True)
    return 0
