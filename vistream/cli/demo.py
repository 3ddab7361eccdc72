"""``make demo``: a seeded classed clip through the whole pipeline on the embedded bus, every
stage scored against the clip's ground truth (issue 23 item 6, issue 24 item 2).

1. A clip of digit sprites of the held-out test digits (class = digit, 6-40 px) moving over a
   photo under a shaking camera, with motion blur and sensor noise
   (:mod:`vistream.models.data.classed`), written to ``sample.mp4``.
2. ``configs/demo.yaml`` on the memory bus: detect -> track -> features (a crop per tracked box
   through the 1-bit backbone on the packed runtime) -> index (live binary index), deblur,
   annotate, thumbnails -> summary. Nothing is handed over from the ground truth: the detector
   finds the targets.
3. While the clip streams (at a third and two thirds of it, and once it is through) the demo
   labels the tracks of about half of the objects with their class, as a user would (a track
   is the object it overlaps most), on the ``labels`` topic; the index learns SDOH from them
   and swaps. At the end, held-out crop queries are scored (mAP) with the index's SDOH codes
   and with the LSH warm start model the index had before the first label, on the same rows.
4. Tracking IDF1, deblur PSNR gain, frames/s per stage; ``annotated.mp4`` (``vistream
   record``'s code on the annotated topic), ``report.html``; the last line printed is one JSON
   object with ``idf1``, ``map_sdoh``, ``map_lsh``, ``deblur_gain_db`` and ``fps``.

What is scored how: :mod:`vistream.cli.demo_score`; the report: :mod:`vistream.cli.demo_report`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vistream.cli.demo_report import write_report
from vistream.cli.demo_score import (
    deblur_gain,
    read_topic,
    retrieval_map,
    split_objects,
    track_scores,
)
from vistream.models.data.classed import ClassedSequence, ClassedSpec, render_classed
from vistream.models.data.video import write_video
from vistream.pipeline.app import InProcessPipeline
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.config import expand_env, parse_config
from vistream.pipeline.record import record_topic
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Label, Message

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
STREAM = "demo-cam"
#: the shipped 1-bit backbone (models/zoo) trained on tracker crops of digits, the domain the
#: demo embeds (its head is right about twice as often on the demo's crops as the
#: digits_composite() net's; docs/hashing.md, "The demo's retrieval")
SHIPPED_BACKBONE = "zoo:binary-resnet20-crops"


class StageClock:
    """Wraps a stage's ``process``: seconds spent in it and distinct frames it handled."""

    def __init__(self, stage) -> None:
        self.seconds = 0.0
        self.frames: set[str] = set()
        inner = stage.process

        def timed(batch: list[Message]) -> list[Message]:
            t0 = time.perf_counter()
            try:
                return inner(batch)
            finally:
                self.seconds += time.perf_counter() - t0
                self.frames.update(m.frame_id.split("#", 1)[0] for m in batch if m.frame_id)

        stage.process = timed

    @property
    def fps(self) -> float:
        return len(self.frames) / self.seconds if self.seconds > 0 else 0.0


def default_artifact() -> str:
    """The 1-bit backbone the demo embeds crops with: ``DEMO_ARTIFACT``, else the shipped one."""
    return os.environ.get("DEMO_ARTIFACT") or SHIPPED_BACKBONE


def build_config(video: Path, out: Path, artifact: str | None):
    env = {"DEMO_VIDEO": str(video.resolve()), "DEMO_OUT": str((out / "summary").resolve()),
           "DEMO_ARTIFACT": artifact or ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        data = yaml.safe_load(expand_env(DEMO_CONFIG.read_text()))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return parse_config(data, str(DEMO_CONFIG))


def make_clip(out: Path, frames: int, seed: int, echo: Callable[[str], None],
              progress: bool = False) -> tuple[ClassedSequence, Path]:
    seq = render_classed(ClassedSpec(seed=seed, n_frames=frames), progress=progress)
    path = write_video(seq, out / "sample.mp4")
    (out / "ground_truth.json").write_text(json.dumps({
        "boxes_xywh": np.round(seq.boxes, 3).tolist(), "present": seq.present.tolist(),
        "ids": seq.ids.tolist(), "classes": seq.classes.tolist(),
        "spec": {k: getattr(seq.spec, k) for k in seq.spec.__dataclass_fields__}}))
    echo(f"sample video: {path} ({frames} frames, {seq.spec.width}x{seq.spec.height}, "
         f"{len(seq.ids)} digit sprites of classes {sorted(set(seq.classes.tolist()))}, "
         f"shaking camera with motion blur; ground truth in {out}/ground_truth.json)")
    return seq, path


def run_demo(out: Path, frames: int = 150, seed: int = 0, artifact: str | None = None,
             echo: Callable[[str], None] = print, progress: bool = True,
             label_share: float = 0.5) -> dict[str, Any]:
    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    seq, video = make_clip(out, frames, seed, echo, progress)
    phases = {"clip": time.monotonic() - t_start}
    artifact = artifact or default_artifact()
    echo(f"backbone of the crops: {artifact}")
    cfg = build_config(video, out, artifact)
    bus = MemoryBus(default_partitions=cfg.bus.partitions)
    pipeline = InProcessPipeline(cfg, bus=bus, progress=progress)
    clocks = {r.name: StageClock(r.stage) for r in pipeline.runners}
    t0 = time.monotonic()
    labeller = Labeller(bus, pipeline, seq, split_objects(seq.classes, seed, label_share))
    try:
        pipeline.start()
        labeller.run()
        _flush_annotations(pipeline, bus)
        if pipeline.errors:
            raise pipeline.errors[0]
        wall = time.monotonic() - t0
        phases["pipeline"] = time.monotonic() - phases["clip"] - t_start
        figures = _score(pipeline, bus, seq, labeller, echo)
    finally:
        pipeline.close()
    phases["scoring"] = time.monotonic() - t_start - sum(phases.values())
    report = pipeline.report()
    echo(f"ingested {sum(s.frames_sent for s in report.sources)} frames; pipeline drained in "
         f"{wall:.1f} s ({frames / wall:.1f} frames/s end to end)")
    fps = {name: round(c.fps, 1) for name, c in clocks.items()}
    for name, st in report.stages.items():
        echo(f"stage {name:9s} in {st.records_in:5d}  out {st.records_out:5d}  "
             f"dead-lettered {st.dead_lettered}  errors {st.errors}  "
             f"{fps[name]:8.1f} frames/s ({clocks[name].seconds:.1f} s busy)")
    # a frame redrawn late (a late caption) replaces its first copy: the window is the clip
    rec = record_topic(bus, "annotated", out / "annotated.mp4", fps=seq.fps, progress=False,
                       reorder=max(64, frames))
    echo(f"annotated video: {rec.path} ({rec.frames} frames)")
    shown = _report_frames(bus, figures["deblur"]["frames"], frames)
    bus.close()
    summary = report.stage_objects["summary"].summary()
    figures["fps"] = {**fps, "pipeline": round(frames / wall, 1)}
    html = write_report(out, seq, figures, report.stage_objects, shown)
    phases["video_and_report"] = time.monotonic() - t_start - sum(phases.values())
    echo(f"report: {html}; contact sheet: {out / 'summary' / 'contact_sheet.png'}; "
         f"summary: {json.dumps(summary)}")
    echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    result = {"idf1": round(figures["tracking"]["idf1"], 4),
              "map_sdoh": round(figures["retrieval"]["sdoh"]["mAP"], 4),
              "map_lsh": round(figures["retrieval"]["lsh"]["mAP"], 4),
              "deblur_gain_db": round(figures["deblur"]["gain_db"], 3),
              "fps": figures["fps"], "lost_for_good": figures["tracking"]["lost_for_good"],
              "seconds": round(time.monotonic() - t_start, 1)}
    (out / "figures.json").write_text(json.dumps(_jsonable(figures), indent=1))
    echo(json.dumps(_jsonable(result)))
    return result


class Labeller:
    """The user of the demo: while the clip streams, labels the tracks it sees of the labelled
    objects (a track is the object it overlaps most), by track id, on the ``labels`` topic.
    Rounds at a third and two thirds of the clip (as far as the track stage got) and once the
    clip is through, so later crops of a labelled track arrive labelled, interleaved with the
    other tracks' crops, as in a live stream. Keeps the LSH warm start model seen before the
    first label, to score it on the final index too."""

    def __init__(self, bus: MemoryBus, pipeline: InProcessPipeline, seq: ClassedSequence,
                 labelled: np.ndarray) -> None:
        self.bus, self.pipeline, self.seq, self.labelled = bus, pipeline, seq, labelled
        self.sent: dict[int, int] = {}  # track id -> object
        self.rounds: list[dict[str, int]] = []
        self.warm_model = None

    def processed(self) -> int:
        st = self.pipeline.stage_objects["track"].streams.get(STREAM)
        return 0 if st is None else st.frames

    def keep_warm_model(self) -> None:
        index = self.pipeline.stage_objects["index"].index
        if index.warm_start and index.model is not None:
            self.warm_model = copy.deepcopy(index.model)

    def label_round(self) -> None:
        self.keep_warm_model()
        group = f"demo-labeller-{len(self.rounds)}"
        states = read_topic(self.bus, "track_states", ("track_state",), group)
        mapping = track_scores(states, self.seq).track_object
        new = [(t, o) for t, o in sorted(mapping.items())
               if self.labelled[o] and t not in self.sent]
        with self.bus.producer() as p:
            for t, o in new:
                r = encode_message(Label("", STREAM, track_id=t,
                                         class_name=str(int(self.seq.classes[o]))))
                p.send("labels", r.value, r.key, r.headers)
            p.flush()
        self.sent.update(new)
        self.rounds.append({"at_frame": self.processed(), "tracks": len(new)})

    def run(self, stop_when_drained: bool = True) -> None:
        """Label at 1/3 and 2/3 of the clip, then wait until drained, then label once more."""
        n = self.seq.n_frames
        for mark in (n // 3, 2 * n // 3):
            while (self.processed() < mark and not self.pipeline.stop.is_set()
                   and not self.pipeline.drained()):
                time.sleep(0.05)
            self.label_round()
        self.pipeline.wait()
        self.label_round()
        index = self.pipeline.stage_objects["index"].index
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.pipeline.stop.is_set():
            time.sleep(0.1)
            if self.pipeline.drained(0.3) and index.sync(0.1):
                break


def _score(pipeline: InProcessPipeline, bus: MemoryBus, seq: ClassedSequence,
           labeller: Labeller, echo: Callable[[str], None]) -> dict[str, Any]:
    """Tracking, deblur and retrieval figures (the pipeline is drained, labels applied)."""
    states = read_topic(bus, "track_states", ("track_state",))
    ts = track_scores(states, seq)
    echo(f"tracking vs ground truth: IDF1 {ts.idf1:.3f}, MOTA {ts.mota:.3f}, "
         f"{ts.switches} id switches, {ts.n_tracks} track ids for {len(seq.ids)} objects; "
         f"lost for good while visible: {ts.lost_for_good or 'none'}")
    deb = _deblur(bus, seq)
    echo(f"deblur: {len(deb['frames'])} frames deblurred, PSNR vs the sharp frames "
         f"{np.mean(deb['psnr_in']) if deb['frames'] else float('nan'):.2f} -> "
         f"{np.mean(deb['psnr_out']) if deb['frames'] else float('nan'):.2f} dB "
         f"(gain {deb['gain_db']:.2f} dB)")
    index = pipeline.stage_objects["index"].index
    st = index.label_stats()
    ids, held_out = index.frame_ids(), ~labeller.labelled
    sdoh = retrieval_map(ids, index.codes(), ts.track_object, seq.classes, held_out)
    sdoh["model"] = f"{st['model']} v{st['model_version']}"
    warm = labeller.warm_model
    if warm is None:
        lsh = {**sdoh, "model": "none (no warm start seen)", "mAP": float("nan")}
    else:
        lsh = retrieval_map(ids, warm.encode(index.features()), ts.track_object, seq.classes,
                            held_out)
        lsh["model"] = f"{warm.name} warm start"
    labelled = labeller.labelled
    echo(f"labels: {len(labeller.sent)} tracks of {int(labelled.sum())} of {len(seq.ids)} "
         f"objects labelled in rounds {labeller.rounds}; {st['labelled']} index rows "
         f"labelled, {st['swaps']} model swaps")
    echo(f"retrieval, held-out crop queries ({lsh['queries']}) against the live index "
         f"({lsh['rows']} crops): mAP {lsh['mAP']:.3f} with the LSH warm start, "
         f"{sdoh['mAP']:.3f} with {sdoh['model']} (a random ranking: "
         f"{sdoh['chance']:.3f})")
    return {"tracking": {**ts.as_dict(), "present": ts.present, "matched": ts.matched,
                         "matched_frames": ts.matched_frames, "track_object": ts.track_object},
            "deblur": deb,
            "retrieval": {"lsh": lsh, "sdoh": sdoh, "labelled_objects":
                          np.flatnonzero(labelled).tolist(), "label_records": len(labeller.sent),
                          "label_rounds": labeller.rounds,
                          "rows_labelled": st["labelled"], "swaps": st["swaps"]}}


def _deblur(bus: MemoryBus, seq: ClassedSequence) -> dict[str, Any]:
    captions = read_topic(bus, "captions", ("caption",))
    done = {c.frame_id for c in captions}
    ins = {f.seq: f.image for f in read_topic(bus, "frames", ("frame",))
           if f.frame_id in done}
    outs = {f.seq: f.image for f in read_topic(bus, "deblurred", ("frame",))
            if f.frame_id in done}
    res = deblur_gain(ins, outs, seq)
    res["captions"] = {c.frame_id: c.text for c in captions}
    return res


def _flush_annotations(pipeline: InProcessPipeline, bus: MemoryBus) -> None:
    """The clip is through: the annotate stage draws the frames still waiting for a track
    record (the last frames of a stream without targets get none), produced to its topic."""
    stage = pipeline.stage_objects.get("annotate")
    topic = pipeline.cfg.stage("annotate").outputs.get("frame") if stage is not None else None
    if stage is None or topic is None:
        return
    with bus.producer() as p:
        for f in stage.flush():
            r = encode_message(f)
            p.send(topic, r.value, r.key, r.headers)
        p.flush()


def _report_frames(bus: MemoryBus, deblurred: list[int], n: int, count: int = 6
                   ) -> list[tuple[str, bytes]]:
    """JPEGs of a few annotated frames for the report: evenly spread, and deblurred ones."""
    want = set(np.linspace(0, n - 1, count).round().astype(int).tolist()) | set(deblurred[:2])
    latest = {f.seq: f for f in read_topic(bus, "annotated", ("frame",)) if f.seq in want}
    return [(f.frame_id, f.data) for _, f in sorted(latest.items())]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 5)
    return v
