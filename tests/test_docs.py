"""README.md and docs/ cannot drift from the code. docs/REFERENCE.md lists exactly the options each
script's --help lists; every command the pages show uses only options its script has; every relative
link resolves (to a heading, where it names one); the shipped model's figures in README are the ones
its checkpoint holds; README's test command is CI's; every test the pages name exists.

Option names compare with '_' and '-' as the same: every script accepts both spellings."""
import functools
import re

import pytest
import torch

from conftest import REPO, run_script
from support.settings import REMOVED_OPTIONS

README = REPO / "README.md"
DOCS = REPO / "docs"
REFERENCE = DOCS / "REFERENCE.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SCRIPTS = ("init.py", "train.py", "run.py")
SHIPPED = REPO / "Saved_Weights" / "pretrained.pth"


def option(name: str) -> str:
    """'--vocab_size' and '--vocab-size' -> 'vocab-size'."""
    return name.lstrip("-").replace("_", "-")


@functools.lru_cache(maxsize=None)
def help_options(script: str) -> frozenset:
    """The options `python SCRIPT --help` lists (each definition line: two spaces, then the option
    and its spellings, then its help), without --help itself."""
    out = run_script(script, "--help")
    assert out.returncode == 0, out.stderr
    names = set()
    for line in out.stdout.splitlines():
        if re.match(r"  -", line):
            names.update(option(n) for n in re.findall(r"--[\w-]+", re.split(r"\s{2,}", line.strip())[0]))
    return frozenset(names - {"help"})


def fenced_and_prose(text: str) -> tuple[list[str], str]:
    """(the fenced code blocks, the rest of the page)."""
    blocks, prose, inside, block = [], [], False, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if inside:
                blocks.append("\n".join(block))
                block = []
            inside = not inside
        elif inside:
            block.append(line)
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def reference_options() -> dict[str, set]:
    """script -> the options in the first cell of the tables of its part of REFERENCE.md."""
    found, script = {s: set() for s in SCRIPTS}, None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            script = next((s for s in SCRIPTS if line[3:].startswith(s)), None)
        elif script and line.startswith("| `--"):
            found[script].update(option(n) for n in re.findall(r"--[\w-]+", line.split("|")[1]))
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_reference_lists_exactly_the_options_of_each_scripts_help(script):
    documented, listed = reference_options()[script], help_options(script)
    assert not listed - documented, f"{script} --help lists options docs/REFERENCE.md lacks"
    assert not documented - listed, f"docs/REFERENCE.md names {script} options that do not exist"


def commands(text: str) -> list[str]:
    """Every piece of code on a page that runs one of the scripts: from the script's name to the end
    of that command (a line end, &&, a pipe, a ;, a comment, or the next script)."""
    blocks, prose = fenced_and_prose(text)
    code = [line for block in blocks for line in block.splitlines()]
    code += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    found = []
    for piece in code:
        starts = [m.start() for m in re.finditer(r"(?<![\w/.-])(?:init|train|run)\.py\b", piece)]
        for start, end in zip(starts, starts[1:] + [len(piece)]):
            found.append(re.split(r"&&|(?<!\\)\||;|\s#", piece[start:end])[0])
    return found


def test_every_command_in_readme_and_docs_uses_only_options_its_script_has():
    # The record of past runs may quote an option since removed (the script names it in one line).
    history = {option(name) for name in REMOVED_OPTIONS} | {"beams"}
    wrong = []
    for page in PAGES:
        for command in commands(page.read_text(encoding="utf-8")):
            script = command.split()[0]
            known = help_options(script) | {"help"} | (history if page.name == "EXPERIMENTS.md" else set())
            wrong += [f"{page.name}: {command.strip()}  ({name})" for name in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", command)
                      if option(name) not in known]
    assert not wrong, "commands with options their script lacks:\n" + "\n".join(wrong)


def github_slugs(page: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped (letters of any
    script, digits, '-' and '_' kept), spaces as '-', a repeated slug numbered -1, -2, ..."""
    slugs, seen = set(), {}
    for line in fenced_and_prose(page)[1].splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
            slugs.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return slugs


def test_github_slugs_drop_punctuation_and_keep_letters_of_any_script():
    page = "## init.py: the tokenizer\n## AdamW's ε, (a) cap\n```\n# a comment, not a heading\n```\n## Notes\n## Notes\n"
    assert github_slugs(page) == {"initpy-the-tokenizer", "adamws-ε-a-cap", "notes", "notes-1"}


def test_every_relative_link_resolves_to_a_file_and_its_heading():
    broken = []
    for page in PAGES:
        prose = re.sub(r"`[^`]*`", "", fenced_and_prose(page.read_text(encoding="utf-8"))[1])
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue                                  # http:, https:, mailto:: not ours to check
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in github_slugs(file.read_text(encoding="utf-8")):
                broken.append(f"{page.name}: {target} (no such heading in {file.name})")
    assert not broken, "\n".join(broken)


def shipped_table() -> list[tuple[str, str]]:
    """README's table of the shipped model (the one with the slice check): (first cell, the rest) per row."""
    tables = re.findall(r"(?:^\|.*\n)+", README.read_text(encoding="utf-8"), flags=re.M)
    table = next(t for t in tables if "slice check:" in t)
    rows = [line.strip().strip("|").split("|", 1) for line in table.splitlines()[2:]]
    return [(label.strip(), rest) for label, rest in rows]


def numbers(text: str) -> list[str]:
    text = re.sub(r"\]\([^)]*\)", "]", text)              # a link's address is not a figure
    return [n.replace(",", "") for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text)]


def stands_for(written: str, value: float) -> bool:
    """'5.79' stands for 5.787648, '2917' for 2917: the value rounded as the text rounds it."""
    decimals = len(written.partition(".")[2])
    return abs(round(value, decimals) - float(written)) < 10 ** -(decimals + 3)


def test_readme_figures_for_the_shipped_model_are_those_in_its_checkpoint():
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    model, settings = ckpt["model_config"], ckpt["train_config"]
    parameters = sum({t.data_ptr(): t.numel() for t in ckpt["model"].values()}.values())   # tied weights once
    figures = {**{k: v for k, v in model.items() if isinstance(v, (int, float))}, "step": ckpt["step"],
               "parameters (M)": parameters / 1e6, "parameters": parameters,
               "val nats/char": ckpt["val_nats_per_char"], "val bits/char": ckpt["val_bits_per_char"],
               **{k: settings[k] for k in ("batch_size", "eval_windows", "max_epochs")}}
    slice_tokens = int(re.search(r"SLICE_TOKENS = (\d+)", (REPO / "tests" / "test_shipped.py").read_text(encoding="utf-8"))[1])
    rows = shipped_table()
    for label, text in rows:
        if label.startswith("slice check:"):         # the figure itself: tests/test_shipped.py computes it
            assert all(n == str(slice_tokens) for n in numbers(text)), text
            continue
        unknown = [n for n in numbers(label + text) if not any(stands_for(n, v) for v in figures.values())]
        assert not unknown, f"README's shipped-model row {label!r} quotes {unknown}, which its checkpoint does not hold"
    quoted = numbers(" ".join(text for _, text in rows))
    for name in ("val nats/char", "val bits/char", "step", "parameters (M)"):
        assert any("." in n and stands_for(n, figures[name]) or n == str(figures[name]) for n in quoted), \
            f"README's shipped-model table lacks its {name}: {figures[name]}"
    words = re.sub(r"\]\([^)]*\)", "]", " ".join(text for _, text in rows))       # without the links' addresses
    assert ("teacher" in words) == bool(settings.get("teacher")), "README's table and the checkpoint differ on the teacher"


def test_readme_test_command_is_the_one_ci_runs():
    ci = next(line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines() if "-m pytest" in line)
    command = re.sub(r"^python3\b", "python", ci.strip())
    blocks = fenced_and_prose(README.read_text(encoding="utf-8"))[0]
    assert any(line.endswith(command) for block in blocks for line in block.splitlines()), command


def test_every_test_and_test_file_the_pages_name_exists():
    sources = {path.name: path.read_text(encoding="utf-8") for path in (REPO / "tests").glob("test_*.py")}
    defined = {name for text in sources.values() for name in re.findall(r"^\s*def (test_\w+)", text, flags=re.M)}
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        missing += [f"{page.name}: {name}" for name in re.findall(r"`(test_\w+)`", text) if name not in defined]
        missing += [f"{page.name}: {path}" for path in re.findall(r"`(tests/[\w/]+\.py)", text)
                    if not (REPO / path).is_file()]
    assert not missing, "\n".join(missing)


def test_every_row_of_the_fault_table_names_the_test_that_checks_it():
    rows = [line for line in (DOCS / "RELIABILITY.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| what happens")]
    assert len(rows) >= 20
    unchecked = [row[:80] for row in rows if not re.search(r"`(test_\w+|tests/[\w/]+\.py)`", row.split("|")[-2])]
    assert not unchecked, "\n".join(unchecked)
