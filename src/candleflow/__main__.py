"""`python -m candleflow` is the `candleflow` command."""

from candleflow.cli import main

main()
