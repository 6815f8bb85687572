"""Numbers that BENCHMARKS.md and bench/NOTES.md quote in prose, and whether the results give them.

bench/check.sh fails on a quoted number that the report it comes from does not print: a ratio or
share worked out by hand drifts from the data unseen. The rule for what counts as a measurement,
so that sizes, counts, versions and dates are left alone:

- a ratio or a share: a number followed by x or % ("1.79x", "8.9%", both ends of "82-85%");
- a rate: a number followed by GB/s;
- any other number with a decimal fraction ("5.70", "0.93-1.02", "3.02 ms");
- but not a version (dotted, "2.28.9", or after the name of what it versions, "PyTorch 2.11"), a
  decimal size ("0.6 GB", "1.5 MiB"), nor anything in a code span (commands and settings) or a
  link's target; integers without x, % or GB/s (leaves, ranks, runs, channels, sizes in MiB,
  dates, "8 x H100") are counts, not measurements.

A ratio "1.69x" is given by "1.69x" or, since tables print ratios bare, by "1.69"; an integer
ratio ("4x") only by "4x". Every other number must appear as that number, with its % if it has one.
"""
import re

# A number, an optional second end of a range, then an optional unit; not inside a longer number
# or word (run34, H200, 2.28.9, 2026-11-21 stay out: their parts touch digits, dots or letters).
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?(x|%| ?GB/s| ?[KMG]i?B\b)?(?![\w]|\.\d|-\d)")
VERSIONED = re.compile(r"(PyTorch|CUDA|NCCL|rustc|Slurm|Debian|driver|gen) $")


def section(doc, title):
    """The text of the "## title" section of a markdown document (to the next "## ")."""
    start = doc.index("\n## " + title) + 1
    end = doc.find("\n## ", start)
    return doc[start:end if end > 0 else len(doc)]


def prose(text):
    """The lines of a section that are prose: no table rows, code blocks, images or heading;
    code spans and link targets removed."""
    out, code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
            continue
        if code or line.startswith(("|", "![", "#")):
            continue
        out.append(strip(line))
    return out


def strip(line):
    return re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", "", line))


def quoted(line):
    """The measurements a line quotes: (number, unit) with unit "x", "%" or ""."""
    for m in NUMBER.finditer(line):
        unit = (m.group(3) or "").strip()
        if unit.endswith("B") or VERSIONED.search(line[:m.start()]):
            continue  # a size, a version
        for v in filter(None, (m.group(1), m.group(2))):
            if unit or "." in v:
                yield v, "" if unit == "GB/s" else unit


def given(number, unit, text):
    """Whether text prints the number (see the module's rule)."""
    pat = re.escape(number) + ("%" if unit == "%" else "x" if unit == "x" and "." not in number else "")
    return re.search(r"(?<![\w.])" + pat + r"(?!\d|\.\d)", text) is not None


def unquoted(lines, text, ratios_only=False):
    """(number as quoted, line) for each measurement of lines that text does not give, and how
    many measurements the lines quote. ratios_only: the earlier, looser form of the check, which
    the host-reduction section keeps: only ratios and shares, given by text anywhere in it."""
    bad, n = [], 0
    for line in lines:
        for v, unit in quoted(line):
            if ratios_only and unit not in ("x", "%"):
                continue
            n += 1
            if not (v + unit in text if ratios_only else given(v, unit, text)):
                bad.append((v + unit, line.strip()))
    return bad, n
