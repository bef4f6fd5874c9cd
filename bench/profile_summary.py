"""Summarise py-spy raw (collapsed) stacks from `bench/run.py --profile DIR`: where idp's workers spend time.

    python bench/profile_summary.py DIR/client_credentials.txt [--top 25]

Prints, as a share of the samples taken while a worker was busy in a request, the inclusive time of idp's own
functions (file:line of the function), and the self time of the hottest functions of any library.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("raw")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    busy = 0
    for line in open(args.raw):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if not any("wsgi_app" in f or "full_dispatch_request" in f for f in frames):
            continue  # idle in accept/select, or the master
        busy += n
        seen = set()
        for frame in frames:
            m = FRAME.match(frame)
            if not m:
                continue
            path = m["file"].split("site-packages/")[-1].replace("/work/main/", "")
            name = f"{m['func']} ({path})"
            if path.startswith("idp/") and name not in seen:
                inclusive[name] += n
                seen.add(name)
        m = FRAME.match(frames[-1])
        if m:
            self_time[f"{m['func']} ({m['file'].split('site-packages/')[-1]})"] += n
    print(f"{busy} busy samples")
    print("idp functions, inclusive:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {n / busy:6.1%}  {name}")
    print("hottest functions, self:")
    for name, n in self_time.most_common(args.top):
        print(f"  {n / busy:6.1%}  {name}")


if __name__ == "__main__":
    main()
