"""`python -m seqbuild` (also what `torchrun -m seqbuild train ...` runs)."""

from seqbuild._cli.main import cli

if __name__ == "__main__":
    cli()
