"""The `sdrt` command: one module per subcommand, imported only when that command runs."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from sdrt.runtime.errors import SdrtError

# command -> (module under sdrt.cli, one line for `sdrt --help`)
COMMANDS = {
    "export": ("export", "export a checkpoint to an artifact folder"),
    "quantize": ("quantize", "add a precision variant to an artifact, with its quality report"),
    "add-vae": ("add_vae", "add another VAE (e.g. the tiny autoencoder TAESD) to an artifact"),
    "info": ("info", "describe an artifact and check it"),
    "plan": ("plan", "add sampler plans to an artifact for C++ hosts"),
    "generate": ("generate", "generate images from a prompt"),
    "eval": ("evaluate", "score prompt fidelity on the demo model"),
    "watermark": ("watermark", "check images for the invisible watermark"),
    "bench": ("bench", "measure latency and memory, against peers if asked"),
}
INTERRUPTED = 130  # a shell's status for a command ended by Ctrl-C (128 + SIGINT)


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser, with the arguments of the `chosen` command only (or of every command when
    none is chosen yet, as for `sdrt --help`... which lists the commands alone)."""
    parser = argparse.ArgumentParser(
        prog="sdrt", description="Stable Diffusion RunTime: export checkpoints to ONNX artifacts and run them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"{__name__}.{module}").add_parser(commands, name, summary)
        else:
            commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((word for word in argv if not word.startswith("-")), None)
    args = _parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    command = importlib.import_module(f"{__name__}.{COMMANDS[args.command][0]}")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return command.run(args, argv[argv.index(args.command) + 1:])
        except SdrtError as error:
            print(f"sdrt: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Files are written through temporary names, so an interrupted command leaves none half-written.
            print("sdrt: interrupted", file=sys.stderr)
            return INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line for the terminal, without the source file and line it came from."""
    print(f"sdrt: warning: {message}", file=sys.stderr if file is None else file)
