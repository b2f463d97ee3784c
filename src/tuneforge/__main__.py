"""`python -m tuneforge …`: the same as the `tuneforge` command."""

from tuneforge.cli.main import main

main()
