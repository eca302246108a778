"""`vpace` command line: one sub-command per verb, heavy imports deferred so `--help` is instant.

Errors: a user error (`vpace.errors.UserError`: a bad config field, index file or checkpoint; a missing file;
an unreadable video) is printed as one line, `vpace CMD: error: ...`, exit status 2. Anything else is a bug
and keeps its traceback (exit status 1); `vpace --debug CMD` shows the traceback of user errors too.
vpace's own warnings (a skipped checkpoint, missing videos) are one line each, `vpace: warning: ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from vpace.bars import mark_terminal

Handler = Callable[[argparse.Namespace], int | None]
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_errors() -> tuple[type[BaseException], ...]:
    from vpace.errors import UserError

    kinds: list[type[BaseException]] = [UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError]
    reader = sys.modules.get("vpace.data.reader")  # an unreadable video; not imported (torch) just to ask
    if reader is not None:
        kinds.append(reader.BrokenVideoError)
    return tuple(kinds)


def _int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low` (a bad count is a usage error, not a traceback from deep down)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


_positive_int, _count = _int_at_least(1), _int_at_least(0)


def _pace(text: str) -> str:
    from vpace.data.pace import parse_pace

    try:
        parse_pace(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _check_layers(layers: list[str]) -> list[str]:
    from vpace.errors import UserError
    from vpace.eval.features import LAYERS

    bad = [x for x in layers if x not in LAYERS]
    if bad:
        raise UserError(f"unknown feature layer(s) {', '.join(bad)}; valid: {', '.join(LAYERS)}")
    return layers


def _cmd_make_synthetic(a: argparse.Namespace) -> int:
    from vpace.data.synthetic import make_synthetic

    info = make_synthetic(a.out, num_videos=a.videos, seed=a.seed)
    print(info)
    return 0


def _cmd_verify_data(a: argparse.Namespace) -> int:
    from vpace.data import load_index
    from vpace.data.verify import verify_index

    index = load_index(a.index, split_id=a.split_id)
    report = verify_index(index)
    print(report.format())
    return 1 if report.broken else 0


def _frame_size(text: str) -> tuple[int, int]:
    """argparse type: ``HxW`` (e.g. 128x171) as ``(height, width)``."""
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 128x171, got {text!r}")
    return int(h), int(w)


def _cmd_prepare(a: argparse.Namespace) -> int:
    from vpace.data.transcode import TranscodeSettings
    from vpace.prepare import prepare

    given = {"short_side": a.short_side, "size": a.size, "gop": a.gop, "crf": a.crf}
    settings = TranscodeSettings(**{k: v for k, v in given.items() if v is not None})  # else its defaults
    report = prepare(a.index, a.out, settings, address=a.address)
    print(report.format())
    return 1 if report.failed else 0


def _cmd_inspect_clip(a: argparse.Namespace) -> int:
    from vpace.data.contact_sheet import write_contact_sheet
    from vpace.data.pace import parse_pace

    out = a.out or f"{Path(a.video).stem}_pace{str(a.pace).replace('/', '-')}.png"
    write_contact_sheet(a.video, parse_pace(a.pace), out, clip_len=a.clip_len, start=a.start)
    print(f"wrote {out}")
    return 0


def _cmd_configs(a: argparse.Namespace) -> int:
    from vpace.config import load_config, named_configs

    for name, path in named_configs().items():
        cfg = load_config(path)
        print(f"{name:14s} method={cfg.method:9s} backbone={cfg.model.backbone:10s} "
              f"paces={cfg.pace.paces:12s} epochs={cfg.optim.epochs:<3d} {path}")
    return 0


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from vpace.config import load_config

    cfg = load_config(a.config, overrides=a.set)  # before importing torch/Ray: a bad --set fails at once
    from vpace.train import pretrain

    result = pretrain(cfg, address=a.address)
    print(result)
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from vpace.train import export_backbone

    out = export_backbone(a.run, a.out)
    print(f"wrote {out}")
    return 0


def _cmd_retrieve(a: argparse.Namespace) -> int:
    from vpace.eval.retrieval import retrieve

    retrieve(a.checkpoint, data=a.data, split_id=a.split_id, layers=_check_layers(a.layers.split(",")),
             baseline=a.baseline, backbone=a.backbone, out_dir=a.out, num_clips=a.num_clips,
             batch_size=a.batch_size, num_workers=a.workers)  # prints the table itself
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    import json

    from vpace.eval.finetuning import finetune
    from vpace.eval.probes import knn_classify, linear_probe

    common = {"data": a.data, "backbone": a.backbone, "baseline": a.baseline, "out_dir": a.out}
    _check_layers([a.layer])
    if a.linear_probe:
        res = linear_probe(a.checkpoint, layer=a.layer, **common)
    elif a.knn:
        res = knn_classify(a.checkpoint, layer=a.layer, k=a.k, **common)
    else:
        res = finetune(a.checkpoint, lr=a.lr, epochs=a.epochs, overrides=a.set, address=a.address, **common)
    print(json.dumps(res.get("summary", res.get("rows", {})), indent=1, default=str))
    return 0


def _cmd_attention(a: argparse.Namespace) -> int:
    from vpace.eval.attention_maps import attention

    res = attention(a.checkpoint, a.videos, paces=a.paces, out=a.out, backbone=a.backbone, start=a.start,
                    scale=a.scale)
    print(f"wrote {res['png']} ({res['rows']} videos x {res['cols']} paces)")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    from vpace.eval.embedding import embed_to_file

    layer = _check_layers([a.layer])[0]
    res = embed_to_file(a.videos, a.checkpoint, out=a.out, layer=layer, mode=a.mode, backbone=a.backbone)
    print(f"wrote {a.out} ({res.get('shape', '')})")
    return 0


def _cmd_speed(a: argparse.Namespace) -> int:
    from vpace.eval.speed_segments import pace_accuracy, speed

    if a.video is None:  # held-out pace accuracy on a split (prints its table)
        pace_accuracy(a.checkpoint, data=a.data, split=a.split, num_clips=a.clips, out_dir=a.out)
        return 0
    res = speed(a.video, a.checkpoint, out_dir=a.out, stride=a.stride)
    print(f"wrote {res['png']} and {res['csv']} ({len(res['rows'])} segments)")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from vpace.eval.report import write_report

    write_report(a.run, out=a.out)
    return 0


def _cmd_tune(a: argparse.Namespace) -> int:
    from vpace.tune import tune

    outcome = tune(a.config, address=a.address, name=a.name, overrides=a.set, resume=not a.no_resume)
    print(outcome)
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from vpace.bench_rows import source_checkout
    from vpace.errors import UserError

    root = source_checkout()
    if root is None:  # an installed wheel: benchmarks/ is not part of it
        raise UserError("the benchmark code is not installed with vpace; it lives in benchmarks/ of the "
                        "vpace source repository (there: `make bench` or `python -m benchmarks.run`)")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from benchmarks.kernels_jitter import print_table

    print_table(quick=not a.full)
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from vpace.demo import run_demo

    run_demo(data=a.data, runs=a.runs, quick=a.quick, overrides=a.set)
    return 0


def _add(sub: argparse._SubParsersAction, name: str, help_: str, handler: Handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(_handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpace",
        description="Self-supervised video representation learning by pace prediction (and RSPNet).",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user errors too (bad config, file, checkpoint)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(sub, "make-synthetic", "write the synthetic motion action set (mp4 + UCF101-style splits)",
             _cmd_make_synthetic)
    p.add_argument("out", help="output folder")
    p.add_argument("--videos", type=_positive_int, default=500, help="number of videos (default 500)")
    p.add_argument("--seed", type=_count, default=0)

    p = _add(sub, "verify-data", "read every video's header and one frame; report broken ones",
             _cmd_verify_data)
    p.add_argument("index", help="data folder, UCF101/HMDB51 split dir, Kinetics CSV or index JSON")
    p.add_argument("--split-id", type=int, default=1)

    p = _add(sub, "prepare", "write a training-ready copy of a video set (H.264 at the training size, a "
             "keyframe every --gop frames, the same frames and layout; one Ray task per video; a re-run "
             "resumes); exit status 1 if a video could not be copied", _cmd_prepare)
    p.add_argument("index", help="data folder, UCF101/HMDB51 split dir, Kinetics CSV or index JSON")
    p.add_argument("out", help="output folder, laid out like the source: then use --set data.index=OUT")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short-side", type=_int_at_least(2), default=None,
                      help="scale to this short side, keeping the aspect ratio (default 128)")
    size.add_argument("--size", type=_frame_size, default=None, metavar="HxW",
                      help="scale to exactly this size, e.g. 128x171 (= data.height x data.width: no rescale "
                           "when training)")
    p.add_argument("--gop", type=_positive_int, default=None, help="a keyframe every N frames (default 16)")
    p.add_argument("--crf", type=_count, default=None, help="x264 quality, 0 (lossless) .. 51 (default 23)")
    p.add_argument("--address", default=None, help="run the tasks on a Ray cluster ('auto'); default: local "
                   "Ray on this machine's CPUs (every node must see INDEX and OUT)")

    p = _add(sub, "inspect-clip", "write a PNG contact sheet of the frames a pace samples", _cmd_inspect_clip)
    p.add_argument("video")
    p.add_argument("--pace", default="1", type=_pace, help="pace, e.g. 2 or 1/2 (default 1)")
    p.add_argument("--clip-len", type=_positive_int, default=16)
    p.add_argument("--start", type=_count, default=0)
    p.add_argument("--out", default=None, help="PNG path (default: <video>_pace<p>.png)")

    _add(sub, "configs", "list the named configs shipped with vpace", _cmd_configs)

    p = _add(sub, "pretrain", "self-supervised pre-training on Ray Train (local Ray unless --address)",
             _cmd_pretrain)
    p.add_argument("--config", required=True, help="named config (see `vpace configs`) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--address", default=None, help="join a running Ray cluster ('auto'); default: local Ray")

    p = _add(sub, "export", "extract the backbone of a run/checkpoint to .safetensors", _cmd_export)
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="output .safetensors path")

    p = _add(sub, "retrieve", "video retrieval (test split queries train split), VCOP/VCP protocol",
             _cmd_retrieve)
    _model_args(p)
    p.add_argument("--layers", default="p5,p4", help="comma list of p5 (last pool) / p4 (second last)")
    p.add_argument("--num-clips", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--workers", type=_count, default=2, help="DataLoader worker processes")

    p = _add(sub, "finetune", "action recognition: fine-tune on Ray Train (or --linear-probe / --knn)",
             _cmd_finetune)
    _model_args(p)
    p.add_argument("--linear-probe", action="store_true", help="logistic regression on frozen features")
    p.add_argument("--knn", action="store_true", help="kNN classifier on frozen (cached) features")
    p.add_argument("--layer", default="p5")
    p.add_argument("--k", type=_positive_int, default=20)
    p.add_argument("--lr", type=float, default=None, help="default 3e-3 (0.01 for s3d_g)")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--address", default=None)

    p = _add(sub, "attention", "conv5 activation attention per pace, as a PNG grid (paper Fig. 5)",
             _cmd_attention)
    p.add_argument("checkpoint", help="run dir, checkpoint dir or backbone file")
    p.add_argument("videos", nargs="+")
    p.add_argument("--paces", default=None, help="default: the run's pace set")
    p.add_argument("--start", type=_count, default=0)
    p.add_argument("--backbone", default=None)
    p.add_argument("--out", default=None, help="PNG path (default <run>/eval/attention.png)")
    p.add_argument("--scale", type=_positive_int, default=1,
                   help="decode and crop at N x the run's size (small-crop nets have a 1x1 conv5)")

    p = _add(sub, "embed", "features of videos to .npy (for downstream use)", _cmd_embed)
    p.add_argument("checkpoint", help="run dir, checkpoint dir or backbone file")
    p.add_argument("videos", nargs="+", help="video files or one data index")
    p.add_argument("--out", default="embeddings.npy")
    p.add_argument("--layer", default="p5")
    p.add_argument("--mode", default="video", choices=("video", "clip"))
    p.add_argument("--backbone", default=None)

    p = _add(sub, "speed", "pace of every segment of a video (PNG + CSV), or without VIDEO the held-out "
             "per-pace accuracy on a split's clips that do not wrap", _cmd_speed)
    p.add_argument("video", nargs="?", default=None)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--stride", type=_positive_int, default=8)
    p.add_argument("--data", default=None, help="held-out mode: data index (default: the run's)")
    p.add_argument("--split", default="test", help="held-out mode: split to measure on")
    p.add_argument("--clips", type=_positive_int, default=5, help="held-out mode: clips per video and pace")
    p.add_argument("--out", default=None, help="output folder")

    p = _add(sub, "report", "write <run>/report.md (config, curves, retrieval/fine-tune tables, benchmarks)",
             _cmd_report)
    p.add_argument("run")
    p.add_argument("--out", default=None)

    p = _add(sub, "tune", "Ray Tune search over pace settings / loss weights (tune_configs/*.yaml)",
             _cmd_tune)
    p.add_argument("config", help="search YAML, e.g. tune_configs/smoke.yaml")
    p.add_argument("--name", default=None, help="experiment name (default: the file's stem); re-run resumes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing experiment")
    p.add_argument("--address", default=None)

    p = _add(sub, "bench", "print kernel benchmarks measured on this machine", _cmd_bench)
    p.add_argument("what", choices=("kernels",))
    p.add_argument("--full", action="store_true", help="the full 30x16x112x112 shape (slower)")

    p = _add(sub, "demo", "the whole job: synthetic data -> pre-train -> retrieval vs random -> report",
             _cmd_demo)
    p.add_argument("--data", default=None, help="use your own UCF101/HMDB51-style folder instead")
    p.add_argument("--runs", default="runs", help="output root (default runs/)")
    p.add_argument("--quick", action="store_true", help="same path, tiny sizes (CI)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the demo config")

    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="run dir, checkpoint dir or backbone file (omit with --backbone for random init)")
    p.add_argument("--data", default=None, help="labeled data (default: the run's data index)")
    p.add_argument("--split-id", type=int, default=1)
    p.add_argument("--baseline", choices=("random",), default=None, help="also evaluate a random init")
    p.add_argument("--backbone", default=None, help="backbone name when there is no checkpoint")
    p.add_argument("--out", default=None, help="output folder (default <run>/eval)")


_python_format_warning = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """vpace's own warnings as one line; other libraries' keep Python's format (with their location)."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR):
        return f"vpace: warning: {' '.join(str(message).split())}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_handler", None):
        parser.print_help()
        return 2
    warnings.formatwarning = _format_warning
    mark_terminal()  # a local Ray's workers inherit it: their forwarded bars print live when we are watched
    try:
        return int(args._handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        user = isinstance(e, _user_errors())
        if user and not args.debug:  # fixable input: one clear line
            print(f"vpace {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        traceback.print_exc()
        if not user:
            print(f"vpace {args.command}: internal error ({type(e).__name__}): a bug in vpace or a library "
                  "it uses; please report it with the traceback above", file=sys.stderr)
        return 2 if user else 1


if __name__ == "__main__":
    sys.exit(main())
