"""`vtcr demo`: the main job on the built-in models, offline (`vtcr.builtin.demo.run_demo`).

One held-out problem of the built-in task reasoned in `vtc` mode round by round (pages saved), then
`vtcr eval` on held-out problems in the four modes (vtc, standard, text, no-memory) plus the blank-memory control, and the
comparison table; it ends by saying where the viewer is.
"""

from __future__ import annotations

from vtcr.builtin.demo import DEMO_PROBLEMS, DEMO_SEED, SUPPORTED_LENGTHS


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="reason with the built-in models and compare vtc, standard, text and no-memory (offline)",
                              description="One held-out problem of the built-in task in vtc mode round by round, then an "
                                          "evaluation of held-out problems in the four modes and the blank-memory control, with the comparison table "
                                          "(accuracy, rounds, peak context, generated tokens, latency) and the HTML viewer.")
    p.add_argument("--out", default="vtcr-demo", metavar="DIR", help="where the example run, its pages and the eval go (default vtcr-demo)")
    p.add_argument("--problems", type=int, default=DEMO_PROBLEMS, metavar="N", help=f"held-out problems to evaluate (default {DEMO_PROBLEMS})")
    p.add_argument("--task-seed", type=int, default=DEMO_SEED, metavar="S", help=f"seed of the held-out problems (default {DEMO_SEED})")
    lo, hi = SUPPORTED_LENGTHS
    p.add_argument("--task-length", default=f"{lo}:{hi}", metavar="MIN:MAX", help=f"steps per problem (default and supported {lo}:{hi})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from vtcr.builtin.demo import run_demo

    if args.problems < 1:
        raise ValueError(f"--problems {args.problems}: give at least 1")
    run_demo(args.out, problems=args.problems, seed=args.task_seed, lengths=args.task_length, progress=not args.quiet)
    return 0
