"""`python -m retrieval.cli`."""

from retrieval.cli import main

main()
