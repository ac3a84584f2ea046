#!/usr/bin/env python3
"""Render server/chattemplate/testdata/templates/*.jinja with every conversation in
testdata/conversations/ the way transformers' apply_chat_template does (Jinja2's
ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, its tojson filter), and write
the results to testdata/golden/TEMPLATE__CONVERSATION.txt (or "RENDER ERROR: message"
when the template refuses the conversation). The Go tests compare the
server's rendering with these files byte for byte.

Run it after adding a template or a conversation (needs python3 with jinja2 >= 3.1):
    python3 hack/chat-template-goldens.py
"""
import json
import pathlib

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parent.parent / "server" / "chattemplate" / "testdata"


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    out = ROOT / "golden"
    out.mkdir(exist_ok=True)
    for tpath in sorted((ROOT / "templates").glob("*.jinja")):
        template = env.from_string(tpath.read_text())
        for cpath in sorted((ROOT / "conversations").glob("*.json")):
            conv = json.loads(cpath.read_text())
            for m in conv["messages"]:
                # transformers takes tool-call arguments as objects.
                for call in m.get("tool_calls", []):
                    args = call["function"]["arguments"]
                    if isinstance(args, str):
                        call["function"]["arguments"] = json.loads(args)
            ctx = {"messages": conv["messages"], "add_generation_prompt": True,
                   "bos_token": "", "eos_token": "<|eos|>", "date_string": "26 Jul 2024"}
            if "tools" in conv:
                ctx["tools"] = conv["tools"]
            if "enable_thinking" in conv:
                ctx["enable_thinking"] = conv["enable_thinking"]
            name = f"{tpath.stem}__{cpath.stem}.txt"
            try:
                text = template.render(**ctx)
            except jinja2.exceptions.TemplateError as e:
                # The Go side must fail too, with the template's message.
                text = f"RENDER ERROR: {e}"
            (out / name).write_text(text)
            print("wrote", name)


if __name__ == "__main__":
    main()
