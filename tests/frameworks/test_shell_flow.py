"""The branches a pasted script takes: memplan's reading against real bash running the same text.

Each script ends in ``echo`` of the values its branches set; bash (found on PATH, as on every Linux CI machine)
runs it with no arguments, and memplan's reading must give the same words. What memplan reads differently
from bash on purpose (branches it cannot settle, ``exit`` inside a branch) is tested by hand below.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.shell import read_script
from memplan.frameworks.shell_flow import MAX_NESTING

DEVICE_CASE = """\
DEVICE=${DEVICE:-$(python3 -c 'import torch_npu' 2>/dev/null && echo npu || echo gpu)}
INFER_BACKEND=${INFER_BACKEND:-vllm}
MACHINE=${MACHINE:-}
EXTRA=()
case "${DEVICE}" in
    gpu | npu) ;;
    *)
        echo "DEVICE must be gpu or npu, got: ${DEVICE}" >&2
        exit 1
        ;;
esac
case "${DEVICE}" in
    gpu)
        tp=${tp:-2}
        case "${MACHINE}" in
            gb200)
                N=${N:-4}
                if [ "${INFER_BACKEND}" = sglang ]; then
                    EXTRA+=(+attention_backend=flashinfer)
                fi
                ;;
            *)
                N=${N:-8}
                ;;
        esac
        ;;
    npu)
        N=16
        tp=4
        if [ "${INFER_BACKEND}" = sglang ]; then
            EXTRA+=(+attention_backend=ascend)
        fi
        ;;
esac
echo $tp $N "${EXTRA[@]}"
"""

SCRIPTS = {
    # verl's example shape (examples/grpo_trainer/run_qwen3_8b_fsdp.sh@v0.9.0), per device and machine.
    "device-gpu": "DEVICE=gpu\n" + DEVICE_CASE,
    "device-npu-sglang": "DEVICE=npu\nINFER_BACKEND=sglang\n" + DEVICE_CASE,
    "device-gb200-sglang": "DEVICE=gpu\nMACHINE=gb200\nINFER_BACKEND=sglang\n" + DEVICE_CASE,
    "elif-chain": """X=3; Y=; Z=abc
if [ -n "$Y" ]; then R=a
elif [ "$X" -gt 5 ]; then R=b
elif [ -z "$Y" ] && [ "$Z" != abd ]; then R=c
else R=d
fi
echo $R""",
    "else": "if [ 1 -eq 2 ] || false; then R=a; else R=b; fi; echo $R",
    "negation-and-or": "if ! [ x = y ] && [ 2 -le 2 ] || [ a = b ]; then R=yes; else R=no; fi; echo $R",
    "double-brackets-glob": """NAME=qwen3-8b; OPT=
if [[ $NAME == qwen* && -z "$OPT" ]]; then R=glob; fi
if [[ $NAME != *70b* || -n "$OPT" ]]; then S=small; fi
echo $R $S""",
    "single-bracket-a-o": "A=1; B=; if [ -n \"$A\" -a -z \"$B\" -o x = y ]; then R=ok; fi; echo $R",
    "arithmetic": """NGPU=8; PP=2; TP=4
if (( NGPU % PP != 0 )); then R=bad; else R=good; fi
if (( NGPU / PP >= TP && TP > 1 )); then S=fits; fi
echo $R $S""",
    "positional-arguments": ('if [[ ${1} != "slurm" ]]; then R=local; fi; if [ "$#" -eq 0 ]; then S=none; fi; '
                             "echo $R $S"),
    "case-patterns": """M=Qwen3-30B-A3B
case $M in
    *-A3B|*-a3b) KIND=moe ;;
    Qwen*) KIND=dense ;;
    *) KIND=other ;;
esac
echo $KIND""",
    "case-fall-through": """X=b; R=; S=
case $X in
    a) R="$R a" ;;
    b) R="$R b" ;&
    c) R="$R c" ;;
    d) R="$R d" ;;
esac
case $X in
    b) S="$S 1" ;;&
    [ab]) S="$S 2" ;;&
    c) S="$S 3" ;;
    *) S="$S 4" ;;
esac
echo $R / $S""",
    "case-parenthesised-one-line": "X=npu; case $X in (gpu) R=1;; (npu) R=2;; esac; echo $R",
    "exit-at-top-level": "A=1\necho $A\nexit 0\nA=2\necho $A",
    "then-on-its-own-line": "X=1\nif [ $X = 1 ]\nthen\n  R=one\nfi\necho $R",
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_branches_match_bash(name: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = SCRIPTS[name]
    ran = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30, check=False,
                         env={"PATH": "/usr/bin:/bin"})
    read = read_script(script)
    assert read.commands[-1][0] == "echo"
    assert read.commands[-1][1:] == ran.stdout.splitlines()[-1].split()
    assert read.notes == ()


def test_a_branch_on_what_the_text_does_not_say_is_read_every_way_with_a_note() -> None:
    read = read_script("if [ -f /etc/cluster ]; then N=16; else N=8; fi\necho $N")
    assert read.commands[-1] == ["echo", "8"]  # both read in order: the last assignment wins, as before
    [note] = read.notes
    assert "'if [ -f /etc/cluster ]'" in note and "cannot evaluate" in note


def test_a_guard_on_what_the_text_does_not_say_is_skipped_silently() -> None:
    read = read_script("""checkSuccess() {
   if [[ $? != 0 ]]; then
      echo "FAILED $1"
      exit 1
   fi
}
if ! command -v ray >/dev/null; then echo "no ray" >&2; exit 1; fi
echo go""")
    assert read.commands[-1] == ["echo", "go"] and read.notes == ()


def test_exit_inside_a_taken_branch_does_not_end_the_reading() -> None:
    # bash stops here (no arguments); memplan reads the path on which the script reaches its launch
    read = read_script('if [ "$#" -lt 2 ]; then echo "usage: run.sh NPROC SAVE"; exit 1; fi\necho launched')
    assert read.commands[-1] == ["echo", "launched"]


def test_an_unknown_case_subject_is_named() -> None:
    read = read_script("case $(hostname) in a*) N=4;; *) N=8;; esac; echo $N")
    assert read.commands[-1] == ["echo", "8"]
    assert "case $(hostname)" in read.notes[0]


@pytest.mark.parametrize("text, message", [
    ("if true; then A=1", "never closed by 'fi'"),
    ("if [ 1 = 1 ]", "never followed by 'then'"),
    ("case x in a) A=1 ;;", "never closed by 'esac'"),
    ("case x in a", "never closed by ')'"),
    ("case x; esac", "followed by a word and 'in'"),
    ("if true; then " * (MAX_NESTING + 1) + "A=1" + "; fi" * (MAX_NESTING + 1), "nest more than"),
])
def test_malformed_control_flow_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_script(text)


def test_deep_nesting_reads_each_compound_once() -> None:
    depth = MAX_NESTING - 1
    read = read_script("if true; then " * depth + "A=1; echo $A" + "; fi" * depth)
    assert read.commands == [["echo", "1"]]
