"""`python -m jobs.finetune --config C`: fine-tune one adapter per task (or group) on Ray, resumably.

Exit status: 0 all jobs trained or reused; 3 some jobs failed or were skipped (the summary says which);
130 interrupted (finished adapters are in the registry: run again to resume).
"""

from __future__ import annotations

import json
import sys

from jobs.common import parser, run_dir, setup, start_ray, tasks_of


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.finetune", __doc__.splitlines()[0])
    args = p.parse_args(argv)
    cfg = setup(args)
    tasks, _ = tasks_of(cfg)
    start_ray(cfg, args)
    from ttft.orchestrate import run_finetunes

    out = run_dir(cfg)
    try:
        summary = run_finetunes(cfg, tasks)
    except KeyboardInterrupt:
        print(
            "\n[ttft] interrupted: finished adapters are in the registry; run again to resume",
            file=sys.stderr,
        )
        return 130
    print(summary.text())
    (out / "finetune.json").write_text(
        json.dumps(
            {
                "counts": summary.counts,
                "seconds": summary.seconds,
                "workers": summary.workers,
                "outcomes": [{k: v for k, v in vars(o).items() if k != "row"} for o in summary.outcomes],
            },
            indent=2,
        )
    )
    return 3 if summary.by_status("failed") or summary.by_status("skipped") else 0


if __name__ == "__main__":
    sys.exit(main())
