"""``python3 -m vaf.gate serve``: the forced command without the console script."""

from vaf.gate.cli import gate

if __name__ == "__main__":
    gate(prog_name="vaf-gate")
