"""``minisam-train <verb> --help``: a table of the verb's keys, their defaults and meanings.

Keys and defaults come from the composed config, meanings from the comments in the shipped YAML files
(``key: value   # meaning``, continued on the following comment-only lines that are indented deeper; a
comment block right above a key describes it too), so the help never drifts from the configs.
"""

from __future__ import annotations

import re
from importlib import resources

CONF_PACKAGE = "minisam_train.conf"
DOCS = {"eval": "docs/evaluation.md", "adapt": "docs/adapters.md", "distill": "docs/distillation.md",
        "average": "docs/distillation.md"}
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*)\s*:(.*)$")
_COMMENT = re.compile(r"(?:^|\s)#\s?(.*)$")
MAX_DEFAULT = 34


def _conf_text(name: str) -> str:
    return resources.files(CONF_PACKAGE).joinpath(f"{name}.yaml").read_text()


def yaml_comments(text: str, prefix: str = "") -> dict[str, str]:
    """``{dotted.key: comment}`` for the keys of one YAML file (a line parser; values are not parsed)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    last_key, last_indent, seen_key = None, -1, False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped:
            pending, last_key = [], None
            continue
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if last_key is not None and indent > last_indent and last_key in out:
                out[last_key] += " " + comment  # continues the comment of the key above
            else:
                pending.append(comment)
                last_key = None
            continue
        m = _KEY.match(line)
        if not m or stripped.startswith("- "):
            last_key = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        c = _COMMENT.search(m.group(3))
        meaning = c.group(1).strip() if c else " ".join(pending) if seen_key else ""  # not the file header
        if meaning:
            out[prefix + key] = meaning
        pending, last_key, last_indent, seen_key = [], prefix + key, indent, True
    return out


def _defaults_list(text: str) -> list[tuple[str | None, str]]:
    """The ``defaults:`` entries of a file as (group or None, name); ``_self_`` as (None, "_self_")."""
    entries, inside = [], False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            inside = True
            continue
        if inside:
            s = line.strip()
            if not s.startswith("- "):
                if s and not s.startswith("#"):
                    break
                continue
            item = s[2:].split("#")[0].strip()
            group, _, name = item.rpartition(":")
            entries.append((group.strip() or None, name.strip()))
    return entries


def config_comments(name: str, group: str = "", prefix: str = "") -> dict[str, str]:
    """Comments of a config file and of every file in its defaults list, merged in composition order."""
    path = f"{group}/{name}" if group else name
    text = _conf_text(path)
    entries = _defaults_list(text)
    if ("_self_" not in [n for g, n in entries]):
        entries.append((None, "_self_"))
    merged: dict[str, str] = {}
    for g, n in entries:
        if n == "_self_":
            merged.update(yaml_comments(text, prefix))
        elif g is None:  # a file of the same group, mounted at the same place
            merged.update(config_comments(n, group, prefix))
        else:
            merged.update(config_comments(n, g, f"{prefix}{g}."))
    return merged


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        import json

        text = json.dumps(value, default=str).replace('"', "")
    else:
        text = str(value)
    return text if len(text) <= MAX_DEFAULT else text[:MAX_DEFAULT - 3] + "..."


def key_rows(cfg, comments: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every leaf of ``cfg``; a commented mapping whose children carry no
    comment of their own (``train.prompts.mix``) is one row."""
    from omegaconf import OmegaConf

    rows = []

    def walk(prefix: str, node):
        if isinstance(node, dict) and node:
            own = comments.get(prefix)
            if prefix and own and not any(k.startswith(prefix + ".") for k in comments):
                rows.append((prefix, _show(node), own))
                return
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append((prefix, _show(node), comments.get(prefix, "")))

    walk("", OmegaConf.to_container(cfg, resolve=False))
    return rows


def _own_keys(config_name: str) -> list[str]:
    """Top-level keys the verb's primary file sets, in file order (shown before the shared ones)."""
    keys = []
    for line in _conf_text(config_name).splitlines():
        m = _KEY.match(line)
        if m and not m.group(1) and m.group(2) not in ("defaults", "hydra") and m.group(2) not in keys:
            keys.append(m.group(2))
    return keys


def verb_help(verb: str, config_name: str, summary: str, cfg) -> str:
    """The text of ``minisam-train <verb> --help``: usage, key table, where the full story is."""
    own = _own_keys(config_name)
    rows = sorted(key_rows(cfg, config_comments(config_name)),  # stable: the file order within each part
                  key=lambda r: own.index(r[0].split(".")[0]) if r[0].split(".")[0] in own else len(own))
    wk = max(len(r[0]) for r in rows)
    wd = max(len(r[1]) for r in rows)
    modality = " [--modality X]" if "modality" in cfg.keys() else ""
    lines = [f"usage: minisam-train {verb}{modality} [key=value ...] [--debug] [--cfg job] [--hydra-help]",
             "", f"{verb}: {summary}", "",
             f"{'key':<{wk}}  {'default':<{wd}}  meaning", f"{'-' * wk}  {'-' * wd}  -------"]
    lines += [f"{k:<{wk}}  {d:<{wd}}  {m}".rstrip() for k, d, m in rows]
    lines += ["", "Set any key with key=value (lists: \"key=[a,b]\"); a free mapping takes new keys with "
              "+key.name=value.",
              f"The composed config: minisam-train {verb} --cfg job.  --debug: tracebacks for errors.",
              f"Documentation: {DOCS.get(verb, 'README.md')}"]
    return "\n".join(lines)
