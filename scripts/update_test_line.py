"""Writes README's test-suite sentence from a pytest run, so no one types the count or the time by hand.

    .venv/bin/python -m pytest 2>&1 | tee runs/pytest.log
    python scripts/update_test_line.py runs/pytest.log [--note "2-core CPU, clean clone"] [--commit HASH]
    python scripts/update_test_line.py --run [--note ...]          (runs `python -m pytest` itself)

Reads pytest's closing summary ("244 passed, 1 skipped in 631.23s (0:10:31)"; `-q` or not), refuses a run
with failures or errors, and replaces the line between `<!-- tests -->` and `<!-- /tests -->` in README.md
with: counts, wall time, the commit (`git rev-parse --short HEAD` unless given) and the note.
"""
import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- tests -->", "<!-- /tests -->"
SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s\b.*?=*\s*$")


def parse_summary(text: str) -> tuple[dict[str, int], float]:
  """pytest's last summary line -> ({"passed": 244, "skipped": 1, ...}, seconds)."""
  for line in reversed(text.strip().splitlines()):
    m = SUMMARY.match(line.strip())
    if m:
      counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", m.group(1))}
      return counts, float(m.group(2))
  raise ValueError("no pytest summary line ('N passed ... in S s') in the output")


def sentence(counts: dict[str, int], seconds: float, commit: str, note: str = "") -> str:
  """'244 passed in 10 min 31 s on commit b810440 (note).' -- refuses failed or errored runs."""
  bad = {k: v for k, v in counts.items() if k in ("failed", "error", "errors") and v}
  if bad:
    raise ValueError(f"the run did not pass: {bad}")
  what = ", ".join(f"{n} {word}" for word, n in counts.items() if word not in ("warning", "warnings"))
  m, s = divmod(round(seconds), 60)
  when = f"{m} min {s} s" if m else f"{s} s"
  return f"Last full run: {what} in {when} on commit {commit}" + (f" ({note})." if note else ".")


def rewrite(readme: str, line: str) -> str:
  """README text with the line between the markers replaced (markers must each occur once)."""
  if readme.count(START) != 1 or readme.count(END) != 1:
    raise ValueError(f"README must hold exactly one {START} ... {END} pair")
  head, rest = readme.split(START)
  _, tail = rest.split(END)
  return f"{head}{START}{line}{END}{tail}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("log", nargs="?", help="pytest output (default: stdin unless --run)")
  p.add_argument("--run", action="store_true", help="run `python -m pytest` here and read its output")
  p.add_argument("--note", default="", help="where it ran, e.g. '2-core CPU, clean clone'")
  p.add_argument("--commit", default=None, help="commit the run tested (default: git HEAD)")
  p.add_argument("--readme", default=str(ROOT / "README.md"))
  a = p.parse_args(argv)
  if a.run:
    proc = subprocess.run([sys.executable, "-m", "pytest"], cwd=ROOT, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    sys.stdout.write(text[-3000:])
  elif a.log:
    text = pathlib.Path(a.log).read_text()
  else:
    text = sys.stdin.read()
  commit = a.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True, check=True).stdout.strip()
  try:
    line = sentence(*parse_summary(text), commit, a.note)
    readme = pathlib.Path(a.readme)
    readme.write_text(rewrite(readme.read_text(), line))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
