"""The runtime on an edge box: numpy + one backend, and importing torch would fail."""
import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "optimum"} | set(sys.argv[1:])
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str, *blocked: str) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *blocked], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_generate_without_torch(tiny_artifact, tmp_path, backend):
    pytest.importorskip(backend)
    out = tmp_path / "image.png"
    result = run_blocked(f"""
        import sdrt
        from sdrt.cli import main
        pipe = sdrt.load({str(tiny_artifact)!r}, backend={backend!r})
        image = pipe("a red circle", num_inference_steps=2, seed=1).images[0]
        assert image.size == (64, 64)
        assert main(["generate", "a red circle", "--artifact", {str(tiny_artifact)!r}, "--backend", {backend!r},
                     "--steps", "2", "--seed", "1", "-o", {str(out)!r}]) == 0
        assert main(["info", {str(tiny_artifact)!r}]) == 0
        for name in ("torch", "diffusers", "transformers", "onnx"):
            assert name not in sys.modules, name
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert out.is_file()


def test_missing_backend_names_the_extra(tiny_artifact):
    result = run_blocked(f"""
        import sdrt
        try:
            sdrt.load({str(tiny_artifact)!r}, backend="openvino")
        except sdrt.BackendUnavailableError as error:
            print(error)
    """, "openvino")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("The openvino backend needs the openvino package, which is not installed: "
                                     "pip install 'sdrt[openvino]'.")


def test_first_command_on_an_onnxruntime_only_box(tmp_path):
    """The README's first command with no --artifact: the demo model, on the backend that is there."""
    out = tmp_path / "out.png"
    result = run_blocked(f"""
        from sdrt.cli import main
        assert main(["generate", "a red circle on a blue background", "-o", {str(out)!r}]) == 0
        assert "openvino" not in sys.modules and "torch" not in sys.modules
        print("ok")
    """, "openvino")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok") and out.is_file()
