"""The ``vistream`` command line."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import threading
import uuid
from pathlib import Path

import typer

import vistream.cli.commands
from vistream.pipeline.allocator import retain_freed_memory
from vistream.pipeline.logs import setup_logging

app = typer.Typer(
    help="vistream: a streaming vision pipeline on Kafka (or an embedded in-process bus).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # joins wrapped docstring lines into paragraphs
)
broker_app = typer.Typer(help="Run a local Apache Kafka broker, or a cluster with --nodes (jars "
                              "from Maven Central, cached outside the repo).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints JSON whose last line holds the figures.",
                        no_args_is_help=True)
eval_app = typer.Typer(help="Evaluations on real and seeded synthetic data; each prints a table "
                            "and writes its figures.", no_args_is_help=True)
train_app = typer.Typer(help="Train models (backbones, 1-bit networks, the deblurring GAN).",
                        no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")

LOG_FORMAT = typer.Option("text", "--log-format", help="text or json (one object per line)")


def _logging(fmt: str = "text", level: str = "INFO") -> None:
    setup_logging(fmt, level)


# ----------------------------------------------------------------------------- broker
PORT = typer.Option(9092, "--port", help="client port; the controller listens on port+1")
DATA_DIR = typer.Option(None, "--data-dir", help="broker folder (default: cache/broker-PORT)")


NODES = typer.Option(1, "--nodes", min=1, max=9,
                     help="nodes of a local KRaft cluster: node i on PORT+2(i-1) (controller on "
                          "the next port), data in DATA_DIR/node-i (default: cache/cluster-PORT)")


@broker_app.command("start")
def broker_start(port: int = PORT, data_dir: Path | None = DATA_DIR, nodes: int = NODES,
                 heap: str | None = typer.Option(None, help="JVM heap (-Xmx) per node "
                                                            "(default: 1g, 256m with --nodes > 1)"),
                 timeout: float = typer.Option(90, help="seconds to wait until it answers")) -> None:
    """Fetch the jars if needed, format KRaft storage once, start the broker in the background
    and wait until it accepts clients. An already running broker is reused. With `--nodes 3`:
    a three-node cluster (one controller quorum, one cluster id), topics created with three
    replicas and min.insync.replicas 2."""
    # deferred: the broker module loads the bus (numpy); --help stays instant
    from vistream.pipeline import broker, cluster

    _logging()
    if nodes > 1:
        c = cluster.start(nodes, port, data_dir, heap=heap or cluster.DEFAULT_HEAP,
                          timeout=max(timeout, 120))
        verb = "reusing running" if c.reused else "started"
        pids = ", ".join(str(n.pid) for n in c.nodes)
        typer.echo(f"{verb} {nodes}-node Kafka cluster {c.cluster_id} (pids {pids}) at "
                   f"{c.bootstrap} (data: {c.data_dir})")
        return
    info = broker.start(port=port, data_dir=data_dir, heap=heap or "1g", timeout=timeout)
    verb = "reusing running" if info.reused else "started"
    typer.echo(f"{verb} Kafka broker pid {info.pid} at {info.bootstrap} (log: {info.log_file})")


@broker_app.command("stop")
def broker_stop(port: int = PORT, data_dir: Path | None = DATA_DIR, nodes: int = NODES) -> None:
    """Stop the broker (or every node of a cluster, at once) cleanly: SIGTERM, then SIGKILL
    after 30 s."""
    # deferred: the broker module loads the bus (numpy); --help stays instant
    from vistream.pipeline import broker, cluster

    _logging()
    if nodes > 1:
        typer.echo(f"{cluster.stop(nodes, port, data_dir)} of {nodes} nodes stopped")
        return
    stopped = broker.stop(port=port, data_dir=data_dir)
    typer.echo("broker stopped" if stopped else "no broker was running")


@broker_app.command("status")
def broker_status(port: int = PORT, data_dir: Path | None = DATA_DIR, nodes: int = NODES) -> None:
    """Say whether the broker (every node of a cluster) runs; exit code 0 if so, 1 if not."""
    # deferred: the broker module loads the bus (numpy); --help stays instant
    from vistream.pipeline import broker, cluster

    if nodes > 1:
        c = cluster.status(nodes, port, data_dir)
        for i, n in enumerate(c.nodes, 1):
            typer.echo(f"node {i}: " + (f"running, pid {n.pid} at {n.bootstrap}" if n.running
                                        else "not running") + f" (data: {n.data_dir})")
        if not c.running:
            raise typer.Exit(1)
        return
    info = broker.status(port=port, data_dir=data_dir)
    if info.running:
        typer.echo(f"running: pid {info.pid} at {info.bootstrap} (data: {info.data_dir})")
    else:
        typer.echo(f"not running (data: {info.data_dir})")
        raise typer.Exit(1)


@broker_app.command("fetch")
def broker_fetch() -> None:
    """Download the Kafka jars with Maven into the cache (done by `start` when needed)."""
    # deferred: the broker module loads the bus (numpy); --help stays instant
    from vistream.pipeline import broker

    _logging()
    typer.echo(f"Kafka {broker.KAFKA_VERSION} jars in {broker.ensure_jars()}")


# ----------------------------------------------------------------------------- ingest
@app.command()
def ingest(
    source: str = typer.Argument(..., help="video file, camera index (0, 1, ...) or image folder"),
    topic: str = typer.Option("frames", help="topic to produce frame records to"),
    fps: float | None = typer.Option(None, help="pace at N frames/s (default: as fast as possible)"),
    stream_id: str | None = typer.Option(None, "--stream-id", help="stream id (default: file name)"),
    quality: int = typer.Option(90, min=1, max=100, help="JPEG quality"),
    limit: int | None = typer.Option(None, min=1, help="stop after N frames"),
    bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka bootstrap servers"),
    partitions: int = typer.Option(4, min=1, help="partitions if the topic must be created"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    log_format: str = LOG_FORMAT,
) -> None:
    """Read frames from SOURCE, JPEG-encode them and produce them to a Kafka topic."""
    # deferred: the runtime loads numpy, cv2 and pydantic; --help stays instant
    from vistream.pipeline.app import install_stop_signals
    from vistream.pipeline.bus import TopicSpec, make_bus
    from vistream.pipeline.sources import open_source
    from vistream.pipeline.ingest import ingest as run_ingest

    _logging(log_format)
    stop = threading.Event()
    install_stop_signals(stop)
    frames = open_source(source)  # a bad source is reported before any broker is contacted
    with make_bus("kafka", bootstrap) as bus:
        bus.create_topics([TopicSpec(topic, partitions)])
        with bus.producer() as producer:
            report = run_ingest(frames, producer, topic, stream_id, fps, quality, limit,
                                progress, stop)
    typer.echo(f"sent {report.frames_sent} frames ({report.bytes_sent / 1e6:.1f} MB) from "
               f"{report.source} to '{topic}' as stream '{report.stream_id}' in "
               f"{report.seconds:.1f} s ({report.fps:.1f} frames/s)"
               + (f"; skipped {report.skipped} unreadable files" if report.skipped else ""))


# ----------------------------------------------------------------------------- running
@app.command()
def run(config: Path = typer.Argument(..., help="pipeline YAML"),
        log_format: str | None = typer.Option(None, "--log-format", help="override the config's")
        ) -> None:
    """Run a whole pipeline: on the memory bus as threads of this process (it ends when the
    sources are exhausted and drained); on Kafka as one process per stage replica."""
    # deferred: the runtime loads numpy, cv2 and pydantic; --help stays instant
    from vistream.pipeline.app import install_stop_signals, run_in_process, run_processes
    from vistream.pipeline.config import load_config

    cfg = load_config(config)
    _logging(log_format or cfg.log_format)
    stop = threading.Event()
    install_stop_signals(stop)
    if cfg.bus.backend == "kafka":
        raise typer.Exit(run_processes(cfg, config, stop))
    report = run_in_process(cfg, stop)
    _print_report(report)


@app.command()
def stage(name: str = typer.Argument(..., help="stage name from the config"),
          config: Path = typer.Option(..., "--config", "-c", help="pipeline YAML"),
          idle_exit: float | None = typer.Option(
              None, help="exit after N seconds without input and with no lag (batch jobs)"),
          log_format: str | None = typer.Option(None, "--log-format")) -> None:
    """Run one stage of a Kafka pipeline in this process. Start more copies to scale out:
    they share the stage's consumer group and split its partitions."""
    # deferred: the runtime loads numpy, cv2 and pydantic; --help stays instant
    from vistream.pipeline.app import install_stop_signals, run_stage
    from vistream.pipeline.config import ConfigError, load_config

    cfg = load_config(config)
    _logging(log_format or cfg.log_format)
    if cfg.bus.backend != "kafka":
        raise ConfigError("`vistream stage` runs one stage against a shared Kafka bus; this "
                          "config uses the in-process memory bus, so use `vistream run` instead")
    stop = threading.Event()
    install_stop_signals(stop)
    stats = run_stage(cfg, name, stop, idle_timeout=idle_exit)
    typer.echo(json.dumps({"stage": name, **vars(stats)}))


@app.command("check")
def check_config(config: Path = typer.Argument(..., help="pipeline YAML")) -> None:
    """Validate a pipeline config and list its topics."""
    # deferred: the config loads numpy, pydantic and yaml; --help stays instant
    from vistream.pipeline.config import load_config

    cfg = load_config(config)
    typer.echo(f"{config}: ok — pipeline '{cfg.name}' on the {cfg.bus.backend} bus, "
               f"{len(cfg.stages)} stage(s), {len(cfg.sources)} source(s)")
    for t, n in cfg.all_topics().items():
        typer.echo(f"  topic {t} ({n} partitions)")


@app.command("stages")
def list_stages() -> None:
    """List the stage types and their parameters."""
    # deferred: the stage types load numpy, pydantic and cv2; --help stays instant
    from vistream.stages.base import stage_types

    for name, cls in sorted(stage_types().items()):
        typer.echo(f"{name}: takes {list(cls.accepts)}, emits {list(cls.emits)}")
        for field, info in cls.Params.model_fields.items():
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                default = repr(info.default_factory())
            else:
                default = repr(info.default)
            typer.echo(f"    {field} = {default}  {info.description or ''}")


@app.command()
def dlq(topic: str = typer.Argument(..., help="a dead-letter topic, e.g. frames.dlq"),
        bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka bootstrap servers"),
        limit: int = typer.Option(20, help="show at most N records")) -> None:
    """Show dead-lettered records with their reasons (reads without committing)."""
    # deferred: the bus loads numpy; --help stays instant
    from vistream.pipeline.bus import make_bus

    with make_bus("kafka", bootstrap) as bus, \
            bus.consumer([topic], f"vistream-dlq-viewer-{uuid.uuid4().hex[:8]}") as c:
        shown = 0
        for _ in range(10):
            for r in c.poll(limit - shown, 1.0):
                h = dict(r.headers)
                typer.echo(f"{h.get('dlq_source', b'?').decode()}  "
                           f"[{h.get('dlq_stage', b'?').decode()}] "
                           f"{h.get('dlq_reason', b'?').decode()}  ({len(r.value or b'')} bytes)")
                shown += 1
            if shown >= limit:
                break
        if not shown:
            typer.echo(f"no records in {topic}")


def _print_report(report) -> None:
    for s in report.sources:
        typer.echo(f"source {s.source}: {s.frames_sent} frames -> '{s.topic}' "
                   f"({s.fps:.0f} frames/s)")
    for name, st in report.stages.items():
        typer.echo(f"stage {name}: in {st.records_in}, out {st.records_out}, "
                   f"dead-lettered {st.dead_lettered}, errors {st.errors}")
    for name, obj in report.stage_objects.items():
        if hasattr(obj, "summary"):
            typer.echo(f"{name} summary: {json.dumps(obj.summary())}")


# ----------------------------------------------------------------------------- demo
@app.command()
def demo(out: Path = typer.Option(Path("out/demo"), help="output folder"),
         frames: int = typer.Option(150, min=24, help="frames in the sample video"),
         seed: int = typer.Option(0, help="seed of the sample video"),
         artifact: str | None = typer.Option(None, help="1-bit backbone artifact for the crops "
                                             "(default: DEMO_ARTIFACT, else the shipped one)"),
         progress: bool = typer.Option(True, "--progress/--no-progress",
                                       help="show progress bars (clip, ingest)")) -> None:
    """Generate a seeded clip of small digit sprites under a shaking camera, run detect, track,
    features, live index, deblur and annotate on the embedded bus, label half of the objects'
    tracks, score every stage against the ground truth and write out/demo/report.html and
    annotated.mp4. The last line is JSON: idf1, map_sdoh, map_lsh, deblur_gain_db, fps."""
    # deferred: the demo loads the runtime (numpy, cv2, pydantic); --help stays instant
    from vistream.cli.demo import run_demo

    _logging("text", "WARNING")
    run_demo(out, frames, seed, artifact=artifact, echo=typer.echo, progress=progress)


# ----------------------------------------------------------------------------- bench
@bench_app.command("bus")
def bench_bus(frames: int = typer.Option(2000, min=10, help="frames per measurement"),
              bootstrap: str | None = typer.Option(
                  None, help="Kafka to use (default: start/reuse a local broker on --port)"),
              port: int = typer.Option(9092, help="port of the local broker to start/reuse"),
              kafka: bool = typer.Option(True, "--kafka/--no-kafka", help="also measure Kafka")
              ) -> None:
    """Frames/s of one hop (produce -> stage -> produce) of 640x360 JPEG frames, on the memory
    bus and on a real broker, and their ratio."""
    # deferred: the benchmark loads the runtime, cv2 and skimage; --help stays instant
    from vistream.bench.bus import bench_bus as run

    _logging("text", "WARNING")
    result = run(frames=frames, bootstrap=bootstrap, port=port, kafka=kafka, echo=typer.echo)
    typer.echo(json.dumps(result))


def _load_command_modules() -> None:
    """Each module of ``pipeline/commands/`` adds its commands to ``app``, ``train_app``,
    ``bench_app`` or ``eval_app`` (import this module's apps and decorate), so feature areas stay apart."""
    for info in pkgutil.iter_modules(vistream.cli.commands.__path__):
        importlib.import_module(f"vistream.cli.commands.{info.name}")


_load_command_modules()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line, exit code 2. Called only once an exception reaches
    :func:`main`: importing these modules (numpy, pydantic, cv2) up front would cost every
    command, ``vistream --help`` included, half a second."""
    # deferred: loads numpy, pydantic and cv2, needed only once an error is raised
    from vistream.pipeline.broker import BrokerError
    from vistream.pipeline.bus import BusError
    from vistream.pipeline.config import ConfigError
    from vistream.pipeline.sources import SourceError

    return ConfigError, SourceError, BrokerError, BusError, KeyError, ValueError


def main() -> None:
    # Before any tensor exists: every stage, benchmark and evaluation runs with it.
    retain_freed_memory()
    try:
        app()
    except Exception as exc:  # SystemExit (--help, typer's exits) passes by untouched
        if not isinstance(exc, _user_errors()):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)

