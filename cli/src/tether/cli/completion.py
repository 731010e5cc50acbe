"""``tether completion bash|zsh``: a completion script generated from the CLI's own parser.

bash: ``source <(tether completion bash)``; zsh: ``source <(tether completion zsh)`` (it loads bashcompinit).
"""

from __future__ import annotations

import argparse

from tether.cli.config import KINDS, WORKLOAD_KINDS

SHELLS = ("bash", "zsh")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(every flag, the flags that take a value)."""
    flags: list[str] = []
    valued: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        flags += action.option_strings
        if action.option_strings and action.nargs != 0:
            valued += action.option_strings
    return flags, valued


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _subcommands(parser)
    top_flags, top_valued = _flags(parser)
    valued = set(top_valued)
    cases = []
    for name, sub in commands.items():
        flags, sub_valued = _flags(sub)
        valued |= set(sub_valued)
        words = [*flags]
        if name == "stat":
            words += sorted(set(KINDS.values()))
        elif name == "edges":
            words += WORKLOAD_KINDS
        elif name == "tap":
            words += [f"{kind}/" for kind in (*WORKLOAD_KINDS, "namespace")]
        elif name == "completion":
            words += SHELLS
        cases.append(f'    {name}) words="{" ".join(words)}" ;;')
    body = "\n".join(cases)
    text = f"""# tether {shell} completion: source <(tether completion {shell})
_tether() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" i skip=0 words
  for ((i = 1; i < COMP_CWORD; i++)); do
    if ((skip)); then skip=0; continue; fi
    case "${{COMP_WORDS[i]}}" in
      {"|".join(sorted(valued))}) skip=1 ;;
      -*) ;;
      *) cmd="${{COMP_WORDS[i]}}"; break ;;
    esac
  done
  case "$prev" in
    -o|--output) COMPREPLY=($(compgen -W "text json wide" -- "$cur")); return ;;
    -t|--time-window) COMPREPLY=($(compgen -W "10s 1m 10m 1h" -- "$cur")); return ;;
    --state-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
  esac
  case "$cmd" in
    "") words="{" ".join([*commands, *top_flags])}" ;;
{body}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _tether tether
"""
    if shell == "zsh":
        text = "autoload -U +X bashcompinit && bashcompinit\n" + text
    return text
