"""The CLIP tokenizer as an OpenVINO model, so a C++ host tokenizes inside OpenVINO.

openvino-tokenizers converts transformers' CLIPTokenizer into a model with one string input
and `input_ids` / `attention_mask` outputs; with padding to max_length and truncation on, its
ids equal sdrt's Python tokenizer's (tests/test_host_files.py). Running it needs the
package's extension library (libopenvino_tokenizers) loaded into OpenVINO.
"""
from __future__ import annotations

import re
from pathlib import Path

from .source import ExportError

XML, BIN = "openvino_tokenizer.xml", "openvino_tokenizer.bin"
_COUNTED = re.compile(r"([A-Za-z]\w*?)_\d+((?:\.\d+)?)")


def write_openvino_tokenizer(tokenizer_folder: Path, max_length: int) -> dict[str, str]:
    """Convert the CLIP tokenizer in `tokenizer_folder` next to its files; return the manifest keys."""
    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        raise ExportError("Exporting needs openvino-tokenizers for the tokenizer model C++ hosts use; install "
                          "it with `pip install 'sdrt[export]'`.") from None
    from transformers import CLIPTokenizer

    folder = Path(tokenizer_folder)
    model = convert_tokenizer(CLIPTokenizer.from_pretrained(folder), with_detokenizer=False, use_max_padding=True,
                              truncation=True, max_length=max_length)
    _name_deterministically(model)
    ov.save_model(model, folder / XML)
    return {"openvino_tokenizer": f"{folder.name}/{XML}", "openvino_tokenizer_weights": f"{folder.name}/{BIN}"}


def _name_deterministically(model) -> None:
    """Nodes the converter leaves unnamed carry process-wide counters (Parameter_1, Convert_144.0;
    Parameter_554, Convert_697.0 on the next conversion in the process); number them by position
    instead, so one tokenizer always gives one file (the demo artifact is checked against a
    fresh export)."""
    for index, op in enumerate(model.get_ordered_ops()):
        match = _COUNTED.fullmatch(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match[1]}_{index}{match[2]}")
    model.input(0).get_tensor().set_names({"prompts"})
