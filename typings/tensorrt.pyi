# TensorRT installs only from NVIDIA's index, so it is missing where sdrt is type-checked; pyright
# would then resolve runtime/backends/tensorrt.py's `import tensorrt` to that file itself (it falls
# back to the importing file's folder). Untyped: any attribute is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
