"""The README and the manual in docs/: the README stays an entrance, links resolve, and every
command in a shell block names things that exist in this repository.

What a shell block (```bash, ```sh, ```console) is held to, line by line (backslash-continued
lines joined, comments dropped; in a block with `$ ` prompts only the prompted lines are
commands, the rest is output):
- `make X`: X is a target of the Makefile;
- a repository path (`jobs/…`, `bench/…`, `serve/…`, `tests/…`, `docker/…`, `.ci/…`,
  `platform/…`, `cluster.yaml`): the file exists;
- `--config FILE`: FILE exists (unless it is a URI);
- `.venv/bin/NAME`: NAME is python, pip, ray, serve, pytest or ruff, or a console script of
  pyproject.toml's [project.scripts].

Cluster blocks: a block whose first line is a comment starting `# cluster` needs a running
cluster and cannot run on a fresh clone as written. It is held to the same checks (the files,
targets and tools it names are this repository's either way); every other block must look
local: no `ray up` / `ray down` / `ray dashboard` / `ray rsync-*` / `ray attach` / `ray exec`,
no `s3://` or `gs://`, no `--address` / `RAY_ADDRESS` host other than 127.0.0.1 or localhost.

Besides: README.md has at most 200 lines; relative links (and their #anchors, GitHub-style)
resolve; repository paths quoted in prose exist; every curl POST sends
`Content-Type: application/json`; every docs page is linked from README.md and docs/README.md.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
SHELL_LANGS = {"bash", "sh", "shell", "console"}
VENV_TOOLS = {"python", "python3", "pip", "ray", "serve", "pytest", "ruff"}
CLUSTER_MARK = re.compile(r"#\s*cluster\b")
CLUSTER_ONLY = [
    (
        re.compile(r"\bray\s+(up|down|dashboard|attach|exec|rsync-up|rsync-down|submit)\b"),
        "ray launcher command",
    ),
    (re.compile(r"\b(s3|gs)://"), "object-store URI"),
    (
        # the host after the scheme, when it is neither 127.0.0.1 nor localhost
        re.compile(
            r"(?:--address[= ]|RAY_ADDRESS=)['\"]?"
            r"(?:https?://(?!(?:127\.0\.0\.1|localhost)\b)|(?!https?://|127\.0\.0\.1\b|localhost\b))[\w$]"
        ),
        "a Ray address that is not 127.0.0.1",
    ),
]
# repository paths as they appear in commands (the prefix must start a token)
REPO_PATH = re.compile(
    r"(?<![\w./$-])((?:jobs|bench|serve|tests|docker|\.ci|platform|docs)/[\w./{},-]*[\w]|cluster\.yaml|pyproject\.toml)"
)
CONFIG_ARG = re.compile(r"--config[= ](\S+)")
VENV_BIN = re.compile(r"(?<![\w/])\.venv/bin/([\w.-]+)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M)}


def console_scripts() -> set[str]:
    """The names under [project.scripts] (read by hand: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert m, "pyproject.toml has no [project.scripts] table"
    return set(re.findall(r"^\s*([\w.-]+)\s*=", m.group(1), re.M))


def shell_blocks(path: Path):
    """(first line number, language, [(line number, text)]) for each fenced shell block."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if lang in SHELL_LANGS:
            yield start, lang, body


def strip_comment(line: str) -> str:
    """Drop a shell comment: `#` at the start or after a blank, outside quotes."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line


def commands(body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Command lines of a block, continuations joined, comments and output dropped."""
    prompted = any(text.lstrip().startswith("$ ") for _, text in body)
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for lineno, text in body:
        if pending is None:
            stripped = text.lstrip()
            if prompted:
                if not stripped.startswith("$ "):
                    continue  # output of the command above
                stripped = stripped[2:]
            pending = (lineno, "")
        else:
            stripped = text.strip()
        code = strip_comment(stripped).rstrip()
        if code.endswith("\\"):
            pending = (pending[0], pending[1] + code[:-1] + " ")
            continue
        joined = (pending[1] + code).strip()
        if joined:
            out.append((pending[0], joined))
        pending = None
    if pending and pending[1].strip():
        out.append((pending[0], pending[1].strip()))
    return out


def is_cluster_block(body: list[tuple[int, str]]) -> bool:
    first = next((text.strip() for _, text in body if text.strip()), "")
    return bool(CLUSTER_MARK.match(first))


def check_command(where: str, cmd: str, targets: set[str], scripts: set[str]) -> list[str]:
    problems = []
    for m in re.finditer(r"(?:^|[\s;&|(])make\s+([^;&|#]*)", cmd):
        for word in m.group(1).split():
            if "=" in word or word.startswith("-"):
                continue
            if word not in targets:
                problems.append(f"{where}: `make {word}`: no such Makefile target")
    for m in REPO_PATH.finditer(cmd):
        token = m.group(1).rstrip(".,:;")
        if any(c in token for c in "<>*{}…"):
            continue  # a placeholder or a pattern, not a file
        if not (ROOT / token).exists():
            problems.append(f"{where}: `{token}` does not exist in the repository")
    for m in CONFIG_ARG.finditer(cmd):
        cfg = m.group(1).strip("'\"")
        if "://" in cfg or cfg.startswith("$") or "<" in cfg:
            continue
        if not (ROOT / cfg).is_file():
            problems.append(f"{where}: `--config {cfg}`: no such file")
    for m in VENV_BIN.finditer(cmd):
        name = m.group(1)
        if name not in VENV_TOOLS and name not in scripts:
            problems.append(
                f"{where}: `.venv/bin/{name}` is neither {sorted(VENV_TOOLS)} nor a console "
                "script of pyproject.toml's [project.scripts]"
            )
    return problems


def test_readme_is_an_entrance():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md: {n} lines (at most {README_MAX_LINES}: the manual lives in docs/)"
    )


def test_relative_links_resolve():
    problems = []
    for path in doc_files():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # http(s), mailto; an anchor on the same page
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve()
                if not dest.exists():
                    problems.append(
                        f"{rel(path)}:{lineno}: link `{target}`: {file_part} does not exist"
                    )
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(
                        f"{rel(path)}:{lineno}: link `{target}`: no heading #{anchor} in {rel(dest)}"
                    )
    assert not problems, "\n".join(problems)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower-cased, punctuation dropped, spaces to hyphens, -1… for repeats."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_shell_blocks_name_what_exists():
    targets, scripts = make_targets(), console_scripts()
    problems, checked = [], 0
    for path in doc_files():
        for start, _lang, body in shell_blocks(path):
            cluster = is_cluster_block(body)
            for lineno, cmd in commands(body):
                where = f"{rel(path)}:{lineno}"
                checked += 1
                problems += check_command(where, cmd, targets, scripts)
                if not cluster:
                    for pattern, what in CLUSTER_ONLY:
                        if pattern.search(cmd):
                            problems.append(
                                f"{where}: {what} in a local block (block at line {start}); "
                                "start the block with `# cluster: …` if it needs a cluster"
                            )
    assert checked > 20, f"only {checked} commands found: is the block parser broken?"
    assert not problems, "\n".join(problems)


def test_ray_address_is_never_a_dashboard_url():
    """`ray.init` refuses an http:// address: RAY_ADDRESS is Ray's own (host:6379, ray://…);
    the dashboard's http://…:8265 is for `ray job submit --address`."""
    problems = [
        f"{rel(path)}:{lineno}: RAY_ADDRESS=http… (use ray job submit --address for the dashboard)"
        for path in doc_files()
        for _start, _lang, body in shell_blocks(path)
        for lineno, cmd in commands(body)
        if re.search(r"RAY_ADDRESS=['\"]?https?://", cmd)
    ]
    assert not problems, "\n".join(problems)


def test_no_placeholder_is_left():
    problems = [
        f"{rel(path)}:{lineno}: {m.group(0)!r}"
        for path in doc_files()
        for lineno, line in enumerate(path.read_text().splitlines(), 1)
        for m in re.finditer(r"\bNNN\b|\bNN minutes|<!--\s*suite-size|\bTODO\b|\bTBD\b", line)
    ]
    assert not problems, "\n".join(problems)


def test_curl_posts_send_json():
    """The API answers 415 to a POST without `Content-Type: application/json`."""
    problems = []
    for path in doc_files():
        for _start, _lang, body in shell_blocks(path):
            for lineno, cmd in commands(body):
                if re.search(r"\bcurl\b", cmd) and re.search(
                    r"-X\s*POST|(^|\s)(-d|--data\S*)\s", cmd
                ):
                    if not re.search(r"Content-Type:\s*application/json", cmd, re.I):
                        problems.append(
                            f"{rel(path)}:{lineno}: curl POST without -H 'Content-Type: application/json'"
                        )
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_readme_and_index():
    readme = (ROOT / "README.md").read_text()
    index = (ROOT / "docs" / "README.md").read_text()
    pages = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "README.md"]
    missing = [f"README.md: no link to docs/{p}" for p in pages if f"(docs/{p}" not in readme]
    missing += [f"docs/README.md: no link to {p}" for p in pages if f"({p}" not in index]
    assert not missing, "\n".join(missing)


def test_inline_code_paths_exist():
    """Repository paths quoted in prose (`jobs/finetune.py`, `tests/probes.yaml`) exist too."""
    problems = []
    for path in doc_files():
        in_fence = False
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            if in_fence:
                continue
            for span in re.findall(r"`([^`]+)`", line):
                for m in REPO_PATH.finditer(span):
                    token = m.group(1).rstrip(".,:;")
                    if any(c in token for c in "<>*{}…") or "://" in span:
                        continue
                    if not (ROOT / token).exists():
                        problems.append(
                            f"{rel(path)}:{lineno}: `{token}` does not exist in the repository"
                        )
    assert not problems, "\n".join(problems)
