"""README.md and README.zh-CN.md link to each other and document the same flags, commands, headings, blocks."""
from __future__ import annotations

import collections
import os
import re
import shutil

import pytest

import sample
from tests.conftest import ROOT

EN, ZH = "README.md", "README.zh-CN.md"
FLAG = re.compile(r"--[a-z_0-9]+")
FENCE = re.compile(r"^\s*(```+)\s*(\S*)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+\S", re.MULTILINE)
MARKER = re.compile(r"^<!-- (?:generated from \S+: \S+|end generated) -->$", re.MULTILINE)
BASH = ("bash", "sh", "shell")
TOP = 5  # the other language's link sits within this many lines of the top


def read(root: str, name: str) -> str:
    """The text of `name` under `root`."""
    with open(os.path.join(root, name), encoding="utf-8") as f:
        return f.read()


def split_fences(text: str) -> tuple[list[tuple[str, str]], str]:
    """(info string, body) of each fenced block in order, and the prose with every fenced block blanked out."""
    blocks, prose, fence, info, body = [], [], None, "", []
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, info, body = match.group(1), match.group(2), []
            prose.append("")
        elif fence is not None and line.strip() == fence:
            blocks.append((info, "\n".join(body)))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def flags(text: str) -> set[str]:
    """Every `--flag` token, anywhere in the text."""
    return set(FLAG.findall(text))


def bash_blocks(text: str) -> list[str]:
    """The bodies of the fenced bash blocks, in order."""
    return [body for info, body in split_fences(text)[0] if info in BASH]


def inline_commands(text: str) -> set[str]:
    """Inline code spans outside fenced blocks that start with `python ` or `pip `, whitespace collapsed."""
    spans = (" ".join(m.group(2).split()) for m in CODE_SPAN.finditer(split_fences(text)[1]))
    return {s for s in spans if s.startswith(("python ", "pip "))}


def heading_levels(text: str) -> list[int]:
    """The level of each `#` heading outside fenced blocks, in order."""
    return [len(m.group(1)) for m in HEADING.finditer(split_fences(text)[1])]


def markers(text: str) -> list[str]:
    """The generated-block markers (opening and closing), in order."""
    return MARKER.findall(text)


def set_drift(what: str, en: set[str], zh: set[str]) -> list[str]:
    """One line per side naming what only that side has."""
    return [f"{what} only in {name}: {sorted(only)}" for name, only in ((EN, en - zh), (ZH, zh - en)) if only]


def link_problems(en: str, zh: str) -> list[str]:
    """Each README that does not link to the other within its first TOP lines."""
    wanted = ((EN, en, ZH), (ZH, zh, EN))
    return [f"{name} does not link to {other} in its first {TOP} lines" for name, text, other in wanted
            if f"]({other})" not in "\n".join(text.splitlines()[:TOP])]


def flag_drift(en: str, zh: str) -> list[str]:
    """The flags one README documents and the other does not."""
    return set_drift("flags", flags(en), flags(zh))


def bash_drift(en: str, zh: str) -> list[str]:
    """Fenced bash blocks that differ, by position, or a different number of them."""
    a, b = bash_blocks(en), bash_blocks(zh)
    out = [f"bash block {i + 1} differs:\n{EN}:\n{x}\n{ZH}:\n{y}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        out.append(f"{len(a)} bash blocks in {EN}, {len(b)} in {ZH}")
    return out


def inline_drift(en: str, zh: str) -> list[str]:
    """The inline `python ...` / `pip ...` commands one README has and the other does not."""
    return set_drift("inline commands", inline_commands(en), inline_commands(zh))


def heading_drift(en: str, zh: str) -> list[str]:
    """Differing heading counts per level, or headings in a different order of levels."""
    a, b = heading_levels(en), heading_levels(zh)
    if a == b:
        return []
    count_a, count_b = collections.Counter(a), collections.Counter(b)
    counts = {f"h{level}": (count_a[level], count_b[level]) for level in sorted(set(a) | set(b))}
    return [f"headings differ: per level ({EN}, {ZH}) {counts}; levels in order {a} vs {b}"]


def marker_drift(en: str, zh: str) -> list[str]:
    """Generated-block markers that are not the same list in the same order."""
    a, b = markers(en), markers(zh)
    return [] if a == b else [f"generated-block markers differ:\n{EN}: {a}\n{ZH}: {b}"]


def parser_flags() -> set[str]:
    """The long flags sample.py's parser defines, --help aside."""
    actions = sample.get_args_parser()._actions
    return {o for a in actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def undocumented_flags(en: str) -> list[str]:
    """sample.py flags that README.md never mentions."""
    missing = sorted(parser_flags() - flags(en))
    return [f"sample.py flags missing from {EN}: {missing}"] if missing else []


def readme_problems(root: str) -> dict[str, list[str]]:
    """Every drift between the two READMEs under `root`, by aspect (an empty list where there is none)."""
    en, zh = read(root, EN), read(root, ZH)
    return {"links": link_problems(en, zh), "flags": flag_drift(en, zh), "bash": bash_drift(en, zh),
            "inline": inline_drift(en, zh), "headings": heading_drift(en, zh), "markers": marker_drift(en, zh),
            "sample flags": undocumented_flags(en)}


def test_readmes_link_to_each_other_near_the_top():
    """Each README links to the other within its first lines."""
    assert link_problems(read(ROOT, EN), read(ROOT, ZH)) == []


# What both READMEs must say alike: (what to extract, how to compare), each non-empty in README.md.
SAME = {
    "flags": (flags, flag_drift),  # the same set of --flags
    "bash blocks": (bash_blocks, bash_drift),  # identical, in order
    "inline commands": (inline_commands, inline_drift),  # `python ...` / `pip ...`
    "headings": (heading_levels, heading_drift),  # same levels, same order
    "generated markers": (markers, marker_drift),  # same blocks, same order
}


@pytest.mark.parametrize("part", SAME)
def test_both_readmes_say_the_same(part):
    """Flags, commands, headings and generated blocks of the two READMEs match."""
    extract, drift = SAME[part]
    en, zh = read(ROOT, EN), read(ROOT, ZH)
    assert extract(en)
    assert drift(en, zh) == []


def test_every_sample_flag_is_in_the_readme():
    """README.md mentions every flag sample.py's parser defines."""
    assert parser_flags()
    assert undocumented_flags(read(ROOT, EN)) == []


def test_parsing_helpers():
    """Fences hide their contents from the prose; code spans may wrap lines; headings inside fences do not count."""
    text = ("# T\n\n```bash\n# not a heading\npython a.py --x\n```\n\n"
            "run `python b.py\n  --y` or `pip install c`, not `ls`\n")
    assert bash_blocks(text) == ["# not a heading\npython a.py --x"]
    assert inline_commands(text) == {"python b.py --y", "pip install c"}
    assert heading_levels(text) == [1]
    assert flags(text) == {"--x", "--y"}


def first_flag(text: str) -> str:
    """The alphabetically first flag of a README, to rename."""
    return sorted(flags(text))[0]


def rename_flag(text: str) -> str:
    """Every occurrence of the first flag renamed."""
    flag = first_flag(text)
    return re.sub(re.escape(flag) + r"(?![a-z_0-9])", flag + "_drift", text)


def edit_last_bash_block(text: str) -> str:
    """One extra line in the last fenced bash block."""
    at = text.rindex("```bash\n") + len("```bash\n")
    return text[:at] + "echo drift\n" + text[at:]


def drop_first_marker(text: str) -> str:
    """The first generated-block opening marker removed."""
    marker = re.search(r"^<!-- generated from .*\n", text, re.MULTILINE)
    return text[:marker.start()] + text[marker.end():]


DRIFTS = {
    "links": (lambda t: t.replace(f"]({EN})", "](README.en.md)"), "does not link"),
    "flags": (rename_flag, "_drift"),
    "bash": (edit_last_bash_block, "echo drift"),
    "inline": (lambda t: t + "\nThen `pip install drift-package`.\n", "pip install drift-package"),
    "headings": (lambda t: t + "\n## Drift\n", "h2"),
    "markers": (drop_first_marker, "generated-block markers differ"),
}


@pytest.mark.parametrize("aspect", sorted(DRIFTS))
def test_a_drifted_translation_is_reported(tmp_path, aspect):
    """A copy of README.zh-CN.md broken in one aspect is reported in that aspect."""
    mutate, expected = DRIFTS[aspect]
    shutil.copy(os.path.join(ROOT, EN), tmp_path / EN)
    original = read(ROOT, ZH)
    drifted = mutate(original)
    assert drifted != original
    (tmp_path / ZH).write_text(drifted, encoding="utf-8")
    problems = readme_problems(str(tmp_path))[aspect]
    assert problems and expected in "\n".join(problems), problems


def test_an_undocumented_sample_flag_is_reported(tmp_path):
    """A README.md that lost one of sample.py's flags is reported, naming the flag."""
    en = read(ROOT, EN)
    flag = sorted(parser_flags())[0]
    (tmp_path / EN).write_text(re.sub(re.escape(flag) + r"(?![a-z_0-9])", "--renamed", en), encoding="utf-8")
    shutil.copy(os.path.join(ROOT, ZH), tmp_path / ZH)
    problems = readme_problems(str(tmp_path))["sample flags"]
    assert problems and flag in problems[0], problems
