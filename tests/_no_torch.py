"""Python source that makes ``import torch`` fail, for subprocess tests of the torch-free parts."""

BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked')\n"
    "sys.meta_path.insert(0, _Block())\n"
)
