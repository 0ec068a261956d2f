"""`python -m infotok_codec` is the `infotok` command."""

from infotok_codec.cli import main

main()
