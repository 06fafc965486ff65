"""Documentation that runs: every ```bash and ```python example of README.md and recipes/*.md.

Each document is run like a tutorial, in order, in its own temporary folder: shell blocks command by
command (a `\\`-continued line is one command), python blocks with exec (one namespace per document).
A step asked for alone (`-k`) first runs the steps before it in its document, so it sees what they
made. What a doc shows is checked:

- `# -> TEXT` or `# prints TEXT` after a command (or a python line): its output holds TEXT; `...`
  in TEXT matches anything, whitespace runs match any whitespace; several in a python block match
  in order;
- an ```output block right after a block: its lines appear, in order, in the block's output;
- a ```console block: `$ command` lines, each followed by lines of its output.

Marks in the docs:
- `# needs: NAME[, NAME]` on a command (or any line of a python block): not run here; the test
  skips it and says which and why (NEEDS lists the names);
- `# synopsis` as the first line of a ```bash block, or a ```text block: usage lines with
  placeholders; only checked, with vtcr's own argparse, for a real verb and flags that exist on
  it (and `--flag a|b|c` alternatives that are among the flag's choices). `vtcr VERB ...` code
  spans in the prose are checked the same way.

The folder of each document holds `trace.txt` (the reasoning of one real shared trace) and the
commands see `$VTCR_DATA` (the shared data) and `HF_HUB_OFFLINE=1`. Commands that are one plain
`vtcr ...` call run in this process through `vtcr.cli.main` (the entry point's function: no
interpreter start per line); anything with shell syntax runs in bash, where `vtcr` is the
installed entry point honouring PYTHONPATH. VTCR_DOCS_SUBPROCESS=1 runs every command in bash.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import re
import shlex
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = (PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "recipes").glob("*.md")))

SHELL_LANGS = {"bash", "sh", "shell"}
CONSOLE_LANGS = {"console", "shell-session"}  # `$ command` lines, each followed by the output it shows
PYTHON_LANGS = {"python", "py"}
SYNOPSIS_LANGS = {"text"}
OUTPUT_LANGS = {"output"}
# Fences that are not examples: diagrams and plain listings (no language), data formats.
INERT_LANGS = {"", "json", "jsonl", "yaml", "toml", "ini", "csv", "markdown", "md", "html", "xml", "diff", "jinja"}
NEEDS = {
    "gpu": "a CUDA GPU",
    "hub": "downloads from the Hugging Face hub",
    "vllm": "vLLM (not installable here)",
    "llamafactory": "LLaMA-Factory (llamafactory-cli)",
    "install": "installs system and Python packages (scripts/install.sh)",
    "long": "a long measurement (tens of minutes or more on 2 cores): its figures are the ones the doc shows",
}
SEED_TRACE_CHARS = 12_000  # trace.txt: the first finished shared trace at least this long (several pages)


# Needs the docs do not mark but the test recognises: (pattern in the example, what it needs, is it here)
IMPLICIT_NEEDS = (
    (re.compile(r"\bvtcr builtin rebuild\b|\brebuild\("), "retrains the built-in models (about 70 minutes on 2 cores); "
     "never run by the docs test", lambda: False),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Reading the docs
# ------------------------------------------------------------------------------------------------


@dataclass
class Fence:
    lang: str
    lines: list[str]
    line: int  # 1-based line of the first body line
    end: int  # 1-based line of the closing fence


@dataclass
class Step:
    doc: str
    line: int
    kind: str  # "shell" | "python" | "synopsis" | "invalid"
    code: str
    block: int
    needs: tuple[str, ...] = ()
    expect: list[str] = field(default_factory=list)
    output_block: list[str] | None = None  # the ```output lines after this step's block (last step only)
    index: int = 0  # position in its document

    @property
    def id(self) -> str:
        words = re.findall(r"[A-Za-z0-9_.-]+", self.code.split("\n", 1)[0])[:2]
        return f"{self.doc}:{self.line}:{self.kind}:{'-'.join(words) or 'block'}"


def fenced_blocks(text: str) -> list[Fence]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence)}{re.escape(fence[0])}*\s*$", lines[j]):
            j += 1
        blocks.append(Fence(lang, lines[i + 1 : j], i + 2, j + 1))
        i = j + 1
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a shell line: the comment starts at a `#` outside quotes, after a space."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip(), line[k + 1 :].strip()
    return line.rstrip(), ""


def parse_needs(comment: str) -> tuple[str, ...]:
    m = re.search(r"\bneeds:\s*([\w-]+(?:\s*,\s*[\w-]+)*)", comment, flags=re.IGNORECASE)
    return tuple(n.strip().lower() for n in m.group(1).split(",")) if m else ()


def parse_expect(comment: str) -> str | None:
    m = re.match(r"(?:->|prints:?)\s*(.+)$", comment)
    return m.group(1).strip() if m else None


def shell_commands(lines: list[str], first_line: int) -> list[tuple[int, str, str]]:
    """(line, command, its comment) per command; `\\`-continued lines are joined."""
    out, pending, start = [], "", None
    for k, raw in enumerate(lines):
        code, comment = split_comment(raw)
        if not code.strip() and not pending:
            continue
        if start is None:
            start = first_line + k
        if code.endswith("\\"):
            pending += code[:-1].strip() + " "
            continue
        out.append((start, (pending + code.strip()).strip(), comment))
        pending, start = "", None
    if pending:
        out.append((start, pending.strip(), ""))
    return out


def is_vtcr_line(code: str) -> bool:
    return bool(re.match(r"^(vtcr\s|python3?\s+-m\s+vtcr\.cli\s)", code.strip()))


def doc_steps(path: Path, root: Path = PROJECT_ROOT) -> list[Step]:
    name = path.relative_to(root).as_posix()
    blocks = fenced_blocks(path.read_text(encoding="utf-8"))
    steps: list[Step] = []
    for b, fence in enumerate(blocks):
        after = blocks[b + 1] if b + 1 < len(blocks) else None
        text = "\n".join(fence.lines)
        new: list[Step] = []
        if fence.lang in SHELL_LANGS:
            synopsis = next((line.strip() for line in fence.lines if line.strip()), "") == "# synopsis"
            for line, code, comment in shell_commands(fence.lines, fence.line):
                if synopsis:
                    new.append(Step(name, line, "synopsis", code, b))
                    continue
                expect = parse_expect(comment)
                new.append(Step(name, line, "shell", code, b, parse_needs(comment), [expect] if expect else []))
        elif fence.lang in CONSOLE_LANGS:
            for k, raw in enumerate(fence.lines):
                if raw.startswith("$ "):
                    code, comment = split_comment(raw[2:])
                    new.append(Step(name, fence.line + k, "shell", code.strip(), b, parse_needs(comment), []))
                elif raw.strip() and new:
                    new[-1].expect.append(raw.strip())
        elif fence.lang in PYTHON_LANGS:
            needs = tuple(n for line in fence.lines for n in parse_needs(split_comment(line)[1]))
            expect = [e for line in fence.lines if (e := parse_expect(_py_comment(line)))]
            new.append(Step(name, fence.line, "python", text, b, needs, expect))
        elif fence.lang in SYNOPSIS_LANGS:
            for line, code, _ in shell_commands(fence.lines, fence.line):
                if is_vtcr_line(code):
                    new.append(Step(name, line, "synopsis", code, b))
        elif fence.lang not in OUTPUT_LANGS | INERT_LANGS:
            new.append(Step(name, fence.line, "invalid", f"```{fence.lang} block: a language the docs test does not "
                            f"know; use bash, python, text, output or none", b))  # fmt: skip
        for step in new:
            unknown = [n for n in step.needs if n not in NEEDS]
            if unknown:
                step.kind, step.code = "invalid", f"unknown need {unknown} (known: {', '.join(NEEDS)}): {step.code}"
        if new and after is not None and after.lang in OUTPUT_LANGS and _only_blank_between(path, fence, after):
            new[-1].output_block = [line for line in after.lines if line.strip()]
        steps += new
    steps += inline_usages(path, name, blocks)
    for i, step in enumerate(steps):
        step.index = i
    return steps


def inline_usages(path: Path, name: str, blocks: list[Fence]) -> list[Step]:
    """`vtcr VERB ...` code spans in the prose, checked like synopsis lines."""
    inside = {n for f in blocks for n in range(f.line - 1, f.end + 1)}
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if n in inside:
            continue
        for m in re.finditer(r"`(vtcr [a-z][^`]*)`", line):
            found.append(Step(name, n, "synopsis", m.group(1), -1))
    return found


def _py_comment(line: str) -> str:
    m = re.search(r"#\s*(.*)$", line)
    return m.group(1).strip() if m else ""


def _only_blank_between(path: Path, first: Fence, second: Fence) -> bool:
    lines = path.read_text(encoding="utf-8").splitlines()
    return all(not line.strip() for line in lines[first.end : second.line - 2])


ALL_STEPS = [step for doc in DOCS for step in doc_steps(doc)]


# ------------------------------------------------------------------------------------------------
# Checking
# ------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def find_in_order(expected: list[str], output: str) -> str | None:
    """None when every expected text occurs in `output` in this order, else the first that does not."""
    out, pos = _norm(output), 0
    for text in expected:
        parts = [re.escape(p) for p in re.split(r"\s*\.\.\.\s*", _norm(text))]
        m = re.compile(r".*?".join(parts), flags=re.DOTALL).search(out, pos)
        if m is None:
            return text
        pos = m.end()
    return None


def vtcr_argv(code: str) -> list[str]:
    argv = shlex.split(code)
    return argv[1:] if argv[0] == "vtcr" else argv[3:]  # "python -m vtcr.cli ..."


def check_synopsis(code: str) -> list[str]:
    """What is wrong with a usage line of a vtcr verb: an unknown verb, flags the verb does not
    have, `--flag a|b` alternatives outside the flag's choices. Lines of other tools: nothing."""
    from vtcr.cli import build_parser, verb_parser

    m = re.search(r"(?:^|\s)(?:vtcr|-m\s+vtcr\.cli)\s+([a-z][\w-]*)", code)
    if not m:
        return []
    verb, rest = m.group(1), code[m.end():]
    parser = build_parser()
    sub = verb_parser(parser, verb)
    if sub is parser:
        return [f"unknown verb {verb!r}"]
    # a verb with sub-verbs (`vtcr bench fidelity ...`): descend into the named one
    while True:
        nested = next((a for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = re.match(r"\s+([a-z][\w-]*)", rest)
        if nested is None or name is None or name.group(1) not in nested.choices:
            break
        sub, verb, rest = nested.choices[name.group(1)], f"{verb} {name.group(1)}", rest[name.end():]
    by_flag = {opt: a for a in sub._actions for opt in a.option_strings}
    problems = []
    for flag in re.findall(r"(?:(?<=\s)|(?<=[\[(|]))(--?[A-Za-z][\w-]*)", rest):
        if flag not in by_flag:
            problems.append(f"vtcr {verb} has no flag {flag}")
    for flag, alternatives in re.findall(r"(--[\w-]+)[ =]([\w.-]+(?:\|[\w.-]+)+)", rest):
        choices = getattr(by_flag.get(flag), "choices", None)
        if choices:
            problems += [f"vtcr {verb} {flag}: {alt!r} is not one of {list(choices)}"
                         for alt in alternatives.split("|") if alt not in choices]  # fmt: skip
    return problems


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    output: str


@contextlib.contextmanager
def _environ(extra: dict[str, str]):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plain_vtcr(code: str) -> bool:
    """One `vtcr ...` call with no shell syntax (pipes, redirections, `;`, `&&`, `$(...)`)."""
    if not is_vtcr_line(code) or "$(" in code or "`" in code:
        return False
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    return not any(tok and set(tok) <= set("|&;<>()") for tok in lexer)


class DocSession:
    """One document's folder, environment and python namespace; runs its steps in order, once."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.namespace: dict = {"__name__": "__doc_example__"}
        self.results: dict[int, Result] = {}

    def result(self, steps: list[Step], index: int) -> Result:
        for step in steps[: index + 1]:
            if step.index not in self.results and runnable(step) is None:
                self.results[step.index] = self._run(step)
        return self.results[index]

    def _run(self, step: Step) -> Result:
        if step.kind == "python":
            return self._in_process(lambda: exec(compile(step.code, f"{step.doc}:{step.line}", "exec"), self.namespace))
        if _plain_vtcr(step.code) and not os.environ.get("VTCR_DOCS_SUBPROCESS"):
            from vtcr.cli import main

            with _environ(self.env):
                argv = [os.path.expanduser(os.path.expandvars(a)) for a in vtcr_argv(step.code)]
            return self._in_process(lambda: main(argv))
        proc = subprocess.run(["bash", "-c", step.code], cwd=self.folder, env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        return Result(proc.returncode, proc.stdout + proc.stderr)

    def _in_process(self, call) -> Result:
        buf = io.StringIO()
        rc = 0
        with contextlib.chdir(self.folder), _environ(self.env), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                rc = call() or 0
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc(file=buf)
                rc = 1
        return Result(int(rc), buf.getvalue())


def runnable(step: Step) -> str | None:
    """Why `step` is not run here (None: it runs)."""
    if step.kind in ("synopsis", "invalid"):
        return step.kind
    if step.needs:
        return "needs " + "; ".join(f"{n}: {NEEDS[n]}" for n in step.needs)
    for pattern, why, available in IMPLICIT_NEEDS:
        if pattern.search(step.code) and not available():
            return why
    return None


@pytest.fixture(scope="session")
def doc_sessions(tmp_path_factory, shared_data) -> dict[str, DocSession]:
    with gzip.open(shared_data / "traces" / "sky_t1_traces.jsonl.gz", "rt", encoding="utf-8") as fh:
        trace = next(t for t in map(json.loads, fh)
                     if t["r1_style"] and not t["likely_truncated"] and len(t["r1_style"]) >= SEED_TRACE_CHARS)  # fmt: skip
    env = {"VTCR_DATA": str(shared_data), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Docs name the shared folders as `../shared/...` (a checkout beside them): give every session
    # folder such a sibling, wherever pytest's temporary root is.
    sibling = tmp_path_factory.getbasetemp() / "shared"
    if not sibling.exists():
        sibling.symlink_to(shared_data.parent, target_is_directory=True)
    sessions = {}
    for doc in DOCS:
        name = doc.relative_to(PROJECT_ROOT).as_posix()
        folder = tmp_path_factory.mktemp("doc-" + re.sub(r"\W+", "_", name))
        (folder / "trace.txt").write_text(trace["r1_style"], encoding="utf-8")
        sessions[name] = DocSession(folder, env)
    return sessions


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ALL_STEPS, ids=[s.id for s in ALL_STEPS])
def test_doc_example(step: Step, request):
    where = f"{step.doc}:{step.line}"
    if step.kind == "invalid":
        pytest.fail(f"{where}: {step.code}")
    if step.kind == "synopsis":
        problems = check_synopsis(step.code)
        assert not problems, f"{where}: {step.code}\n" + "\n".join(problems)
        return
    why = runnable(step)
    if why:
        pytest.skip(f"{where}: {why}")
    sessions = request.getfixturevalue("doc_sessions")
    steps = [s for s in ALL_STEPS if s.doc == step.doc]
    session = sessions[step.doc]
    result = session.result(steps, step.index)
    earlier = [f"{s.doc}:{s.line}" for s in steps[: step.index] if s.index in session.results
               and session.results[s.index].rc != 0]  # fmt: skip
    context = f" (earlier steps that failed: {', '.join(earlier)})" if earlier else ""
    assert result.rc == 0, f"{where}: `{step.code[:200]}` exited {result.rc}{context}\n{result.output[-3000:]}"
    missing = find_in_order(step.expect, result.output)
    assert missing is None, f"{where}: the doc says the output shows {missing!r}; it was:\n{result.output[-3000:]}"
    if step.output_block is not None:
        block = "".join(session.results[s.index].output for s in steps if s.block == step.block and s.index in session.results)
        missing = find_in_order(step.output_block, block)
        assert missing is None, f"{where}: the ```output block shows {missing!r}; the block printed:\n{block[-3000:]}"


def test_every_doc_example_is_found():
    """The docs hold examples of each kind, and every command the docs show belongs to one of them."""
    kinds = {s.kind for s in ALL_STEPS}
    assert {"shell", "python", "synopsis"} <= kinds
    assert any(s.doc == "README.md" for s in ALL_STEPS) and any(s.doc.startswith("recipes/") for s in ALL_STEPS)


# --- the checker itself can fail -----------------------------------------------------------------


def test_synopsis_check_names_unknown_flags_verbs_and_choices():
    assert check_synopsis('vtcr reason "QUESTION" --model CHECKPOINT [--mode vtc|standard] [--json]') == []
    assert check_synopsis("vtcr reason Q --model M --bogus") == ["vtcr reason has no flag --bogus"]
    assert check_synopsis("vtcr reason Q --model M --mode vtc|fast") == [
        "vtcr reason --mode: 'fast' is not one of ['vtc', 'standard', 'text', 'no-memory', 'blank-memory']"]
    assert check_synopsis("vtcr reasn Q") == ["unknown verb 'reasn'"]
    assert check_synopsis("accelerate launch -m vtcr.cli train --data d --model m --out o --nope") == [
        "vtcr train has no flag --nope"]
    assert check_synopsis("llamafactory-cli train lf/vtcr_sft.yaml") == []


def test_reading_marks_expectations_and_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "```bash\nvtcr env   # -> vtcr ...\nmake demo  # needs: install, GPU\n```\n\n```output\nline one\n```\n"
        "```python\nprint(21)  # -> 21\n```\n```bash\n# synopsis\nvtcr render IN -o DIR \\\n  --json\n```\n"
        "```rust\nfn main() {}\n```\n```bash\nvtcr x  # needs: moon\n```\n"
        "```console\n$ vtcr env\nvtcr ...\npackages:\n$ vtcr env --json  # needs: gpu\n```\n",
        encoding="utf-8",
    )
    steps = doc_steps(doc, root=tmp_path)
    assert [(s.kind, s.line) for s in steps] == [("shell", 2), ("shell", 3), ("python", 10), ("synopsis", 14),
                                                 ("invalid", 18), ("invalid", 21), ("shell", 24), ("shell", 27)]  # fmt: skip
    assert steps[6].expect == ["vtcr ...", "packages:"] and steps[7].needs == ("gpu",) and steps[7].code == "vtcr env --json"
    assert steps[0].expect == ["vtcr ..."] and steps[1].needs == ("install", "gpu")
    assert steps[1].output_block == ["line one"] and steps[2].expect == ["21"]
    assert steps[3].code == "vtcr render IN -o DIR --json"
    assert find_in_order(["a ... c", "d"], "a b\n  c d") is None
    assert find_in_order(["d", "a"], "a b c d") == "a"
    assert split_comment('vtcr reason "a # b" --json  # -> x') == ('vtcr reason "a # b" --json', "-> x")
    assert not _plain_vtcr("vtcr env --json > env.json") and _plain_vtcr('vtcr reason "a; b" --model m')
