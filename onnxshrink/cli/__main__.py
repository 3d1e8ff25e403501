"""``python -m onnxshrink.cli``: the same as the ``onnxshrink`` command."""

from onnxshrink.cli import main

main()
