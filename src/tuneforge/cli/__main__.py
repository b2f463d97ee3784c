"""`python -m tuneforge.cli …` (what torchrun and accelerate launch)."""

from tuneforge.cli.main import main

main()
