"""`python -m retrieval.cli`."""

from retrieval.cli import main

if __name__ == "__main__":  # not when a reader process (retrieval.io.sandbox) imports the main module
    main()
