"""``vaf-gate``, and ``python3 -m vaf.gate serve``: the forced command of the workers' key."""

from vaf.gate.cli import gate


def main() -> None:
    gate(prog_name="vaf-gate")


if __name__ == "__main__":
    main()
