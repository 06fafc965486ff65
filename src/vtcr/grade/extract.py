"""Answer extraction: the final answer of a model response (math, or a multiple-choice letter).

`extract_answer(response, answer_type)`: the `<answer>...</answer>` after the last `</think>`, else the
last box, else "the answer is ...", else the last number; for multiple choice a letter A-D.
A box is LaTeX's `\\boxed{...}` or GLM-4.1V's `<|begin_of_box|>...<|end_of_box|>` (its models box
the final answer that way, usually inside `<answer>` tags); inside `<answer>` tags the box wins.
Pure text functions: no ML libraries, nothing slow.
"""

from __future__ import annotations

import re
from typing import Literal

AnswerType = Literal["math", "integer", "number", "multiple_choice"]
ANSWER_TYPES: tuple[str, ...] = ("math", "integer", "number", "multiple_choice")

# Ends of the thinking part: R1 / VTC-R1 style, and Sky-T1 style (the shared traces).
_THINK_END = re.compile(r"</think>|<\|end_of_thought\|>")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# GLM-4.1V / Glyph: the answer box written with the model's control tokens.
GLM_BOX = ("<|begin_of_box|>", "<|end_of_box|>")
_GLM_BOX = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
# "The final answer is: $x$", "the answer is x", "**Answer:** x" (a literal first, for speed)
_ANSWER_IS = re.compile(r"answer(?:\s+is|\s*[:=])\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _check_answer_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the `{...}` group opening at `text[start]`, and the index after it.

    Counts nesting and skips escaped braces (`\\{`), which are literal in LaTeX.
    """
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced: the response was cut off inside the box


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, `\\boxed x` and `\\fbox{...}` in `text`, in order."""
    found = []
    for match in _BOXED.finditer(text):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _braced(text, i)
            if group is not None:
                found.append(group[0])
        elif i > match.end():  # `\boxed 5`: the next token
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                found.append(token.group(0))
    return found


def last_boxed(text: str) -> str | None:
    """The last non-empty boxed content in `text`, stripped, or None."""
    for content in reversed(boxed_contents(text)):
        if content.strip():
            return content.strip()
    return None


def last_answer_box(text: str) -> str | None:
    """The content of the last non-empty box of either kind (`\\boxed{}` or GLM's
    `<|begin_of_box|>...<|end_of_box|>`), stripped, or None. A LaTeX box inside a GLM box counts as
    the GLM box's content."""
    glm = [(m.start(), m.group(1)) for m in _GLM_BOX.finditer(text) if m.group(1).strip()]
    if glm:
        start, content = glm[-1]
        latex_after = last_boxed(text[start + len(GLM_BOX[0]) + len(content):])
        if latex_after is None:
            return last_boxed(content) or content.strip()
        return latex_after
    return last_boxed(text)


def _strip_math(text: str) -> str:
    """Drop math delimiters, Markdown emphasis and trailing punctuation around an answer."""
    s = text.strip()
    for _ in range(3):  # nested wrappers like `**$x$**.`
        before = s
        s = s.strip().strip("*").strip()
        s = re.sub(r"[.,;:]+$", "", s).strip()  # not "!": 5! is a factorial
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left) : len(s) - len(right)].strip()
        if s == before:
            break
    return s


# Phrases after "the answer is" that judge the work instead of stating a result.
_NOT_ANSWERS = {"correct", "incorrect", "right", "wrong", "consistent", "confirmed", "verified", "valid",
                "the same", "as follows", "below", "above", "clear", "indeed", "yes, correct"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _answer_phrase(rest: str) -> str | None:
    """The answer named by the words after "the answer is" (None when they name none)."""
    line = rest.split("\n")[0]
    boxed = last_boxed(line)
    if boxed:
        return boxed
    sentence = re.split(r"\.(?:\s|$)", line)[0]
    span = _MATH_SPAN.search(sentence)  # "... is definitely \\(8000\\)."
    if span:
        inner = next(g for g in span.groups() if g is not None).strip()
        if inner:
            return inner
    phrase = _strip_math(sentence)
    if not phrase or phrase.lower() in _NOT_ANSWERS:
        return None
    words = phrase.split()
    lead = words[0].lower().strip(",;:")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", lead) or lead in _NUMBER_WORDS:
        # "three boxes contain neither pens nor pencils" -> "3"; "27 miles" keeps its unit
        return _NUMBER_WORDS.get(lead, phrase if len(words) <= 3 else lead)
    return phrase if len(words) <= 3 else None  # a long sentence is prose, not an answer


def _answer_is(text: str) -> str | None:
    """The answer after the last "the answer is" / "Answer:" that names one."""
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        found = _answer_phrase(match.group(1))
        if found:
            return found
    return None


def _last_number(text: str) -> str | None:
    # Numbers sit near the end of a long response: scan its tail first.
    tail = text[-4000:]
    matches = _NUMBER.findall(tail)
    if len(tail) < len(text) and (not matches or tail.startswith(matches[0]) and len(matches) == 1):
        matches = _NUMBER.findall(text)
    if not matches:
        return None
    number = matches[-1].rstrip(",")
    if "," in number:  # 1,000 is a thousand; in "1,2,3" the last number is 3
        number = number.replace(",", "") if _THOUSANDS.fullmatch(number) else number.rsplit(",", 1)[1]
    return number or None


def _letter(text: str | None) -> str | None:
    """The choice letter a short answer names: `C`, `(C)`, `\\text{C}`, `C) 42`, `Option C`."""
    if not text:
        return None
    s = _strip_math(text)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = _strip_math(s)
    s = re.sub(r"^(?:option|choice|answer)\s*:?\s*", "", s, flags=re.IGNORECASE)
    m = re.match(r"^[(\[]?\s*([A-Da-d])\s*[)\]]?(?=$|[\s.:,)])", s)
    if m and (m.group(1).isupper() or len(s) <= 3):  # a lone lower-case "c" is a letter; "c is ..." is not
        return m.group(1).upper()
    return None


def _regions(response: str) -> list[str]:
    """Where to look for the answer: the text after the last end-of-thinking mark, then everything."""
    ends = list(_THINK_END.finditer(response))
    if ends:
        tail = response[ends[-1].end() :]
        return [tail, response] if tail.strip() else [response]
    return [response]


def _answer_tag(text: str) -> str | None:
    for inner in reversed(_ANSWER_TAG.findall(text)):
        if inner.strip():
            boxed = last_answer_box(inner)
            return boxed if boxed else _strip_math(inner.replace(GLM_BOX[0], "").replace(GLM_BOX[1], ""))
    return None


def extract_answer(response: str | None, answer_type: str = "math") -> str | None:
    """The final answer of a model response, or None when it gives none.

    Math: `<answer>` tags after the last `</think>`, else the last box (`\\boxed{}` or GLM's), else the phrase
    after "the answer is", else the last number. The part after the last `</think>` is searched
    first; the whole text only when it holds no tag, box or answer phrase (a truncated response).
    Multiple choice: a letter A-D from the same places, or from "answer is (C)"-style phrases.
    """
    _check_answer_type(answer_type)
    if not response:
        return None
    regions = _regions(response)
    if answer_type == "multiple_choice":
        return _extract_letter(regions)
    for region in regions:
        for finder in (_answer_tag, last_answer_box, _answer_is):
            found = finder(region)
            if found:
                return found
    return _last_number(regions[0]) or _last_number(response)


def _extract_letter(regions: list[str]) -> str | None:
    for region in regions:
        for finder in (_answer_tag, last_answer_box, _answer_is):
            letter = _letter(finder(region))
            if letter:
                return letter
        # Looser phrasings, last one wins: "the correct option is (B)", "**Answer: C**".
        loose = re.findall(
            r"(?:answer|option|choice)\W{0,6}(?:is\W{0,6})?(?:option\s+)?\(?([A-D])\)?(?![A-Za-z])",
            region,
            flags=re.IGNORECASE,
        )
        if loose:
            return loose[-1].upper()
    return None
