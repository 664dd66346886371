#!/usr/bin/env python3
"""Which scoreboard each load of a kernel writes and which scoreboards each instruction waits on,
read from `cuobjdump -sass` output (sm_70 and later: 128-bit instructions).

Why: a warp has six scoreboards for variable-latency results, and a wait covers every load
issued on that scoreboard so far. When ptxas puts a segment's x loads and the next segment's
weight loads on the same one, the first use of x waits for the weights too, which undoes a
software pipeline (bench/NOTES.md v13 item 7). The SASS text does not show this; the control bits
of each instruction's second 64-bit word do (bits 41-44 stall cycles, 45 yield, 46-48 the
scoreboard this instruction's result sets, 49-51 the one its register reads set, 52-57 the mask
of scoreboards it waits on; 7 means none).

    nvcc ... -cubin -o k.cubin src/cuda/qmv_mma_kernels.cu && cuobjdump -sass k.cubin > k.sass
    python3 scripts/sass_scoreboards.py k.sass --function 'qmv_mma_kernelI6__halfLi4ELi8ELb1E'

cuobjdump is in the CUDA toolkit, or on PyPI as `nvidia-cuda-cuobjdump`. By default only memory
instructions, barriers, branches and instructions that wait are printed (--all: every one).
"""

import argparse
import re
import sys

INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s+/\* (0x[0-9a-f]{16}) \*/")
SECOND_WORD = re.compile(r"^\s+/\* (0x[0-9a-f]{16}) \*/\s*$")
INTERESTING = re.compile(r"\b(LDG|STG|LDS|STS|LDC|LDL|STL|LDGSTS|ATOM|ATOMG|RED|BAR|MEMBAR|FENCE|WARPGROUP|BRA)\b")


def decode_control(word):
    """Control fields of an instruction's second 64-bit word."""
    return {
        "stall": (word >> 41) & 0xF,
        "yield": (word >> 45) & 1,
        "write_sb": (word >> 46) & 7,
        "read_sb": (word >> 49) & 7,
        "wait_mask": (word >> 52) & 0x3F,
        "reuse": (word >> 58) & 0xF,
    }


def functions(lines):
    """Yields (name, [(address, text, control)]) for each function of a cuobjdump -sass listing."""
    name, body = None, []
    for i, line in enumerate(lines):
        if "Function : " in line:
            if name is not None:
                yield name, body
            name, body = line.split("Function : ", 1)[1].strip(), []
            continue
        match = INSTRUCTION.match(line)
        if name is None or not match or i + 1 >= len(lines):
            continue
        second = SECOND_WORD.match(lines[i + 1])
        if not second:
            raise ValueError(f"line {i + 2}: expected the instruction's second word")
        body.append((match.group(1), match.group(2), decode_control(int(second.group(1), 16))))
    if name is not None:
        yield name, body


def format_row(index, address, text, control):
    waits = "".join(str(b) for b in range(6) if control["wait_mask"] >> b & 1)
    write = "-" if control["write_sb"] == 7 else str(control["write_sb"])
    read = "-" if control["read_sb"] == 7 else str(control["read_sb"])
    return (f"{index:5d} {address} stall {control['stall']:2d} {'Y' if control['yield'] else ' '} "
            f"sets {write} reads {read} waits [{waits:6s}] {text}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sass", help="cuobjdump -sass output ('-' for stdin)")
    parser.add_argument("--function", required=True, help="regular expression for the function name")
    parser.add_argument("--all", action="store_true", help="print every instruction")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.sass == "-" else open(args.sass, encoding="utf-8").read()
    pattern = re.compile(args.function)
    matched = [(name, body) for name, body in functions(text.split("\n")) if pattern.search(name)]
    if not matched:
        print(f"sass_scoreboards: no function matches {args.function!r}", file=sys.stderr)
        return 1
    name, body = matched[0]
    if len(matched) > 1:
        print(f"sass_scoreboards: {len(matched)} functions match; showing the first", file=sys.stderr)
    print(f"# {name}")
    for index, (address, instruction, control) in enumerate(body):
        if args.all or control["wait_mask"] or INTERESTING.search(instruction):
            print(format_row(index, address, instruction, control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
