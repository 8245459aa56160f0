"""Allow `python -m dlsa_cli`."""

from dlsa_cli.cli import main

if __name__ == "__main__":
    main()
