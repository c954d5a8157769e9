"""Print one generated program: ``python -m data_tools.generators FAMILY SEED``."""

import sys

from data_tools.generators import generate

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m data_tools.generators FAMILY SEED")
    print(generate(sys.argv[1], int(sys.argv[2])).code)
