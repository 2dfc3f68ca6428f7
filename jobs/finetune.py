"""`python -m jobs.finetune --config C`: fine-tune one adapter per task (or group) on Ray, resumably.

Exit status: 0 all jobs trained or reused; 3 some jobs failed or were skipped, or an outcome could not be
recorded in the registry (the summary and finetune.json say which); 130 interrupted (finished adapters
are in the registry: run again to resume).
"""

from __future__ import annotations

import json
import sys

from jobs.common import parser, publish, run_dir, setup, start_ray, tasks_of
from ttft.registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m jobs.finetune", __doc__.splitlines()[0])
    args = p.parse_args(argv)
    cfg = setup(args)
    tasks, _ = tasks_of(cfg)
    cfg, identity = start_ray(cfg, args)
    from ttft.orchestrate import run_finetunes

    out = run_dir(cfg)
    try:
        summary = run_finetunes(cfg, tasks, identity=identity)
    except KeyboardInterrupt:
        print(
            "\n[ttft] interrupted: finished adapters are in the registry; run again to resume",
            file=sys.stderr,
        )
        return 130
    except (RegistryError, OSError) as e:  # the store is down before any job ran
        print(f"[ttft] the registry at {cfg.registry.root} failed: {e}", file=sys.stderr)
        return 3
    print(summary.text())
    (out.local / "finetune.json").write_text(json.dumps(summary.to_json(), indent=2))
    publish(out)
    failed = summary.by_status("failed") or summary.by_status("skipped") or summary.registry_errors
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
