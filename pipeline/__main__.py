import sys

from pipeline.portable import apply

apply(sys.argv[1:])  # before anything imports torch

from pipeline.cli import main  # noqa: E402

main()
