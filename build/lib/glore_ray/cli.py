"""`glore <command> CONFIG [key=value ...]` — thin: parse, validate, call the stage functions.

Exit codes: 0 ok, 1 a stage failed, 2 bad input (config, overrides, missing file, data a stage
cannot use, a run folder another process is writing; one line, ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import traceback
from pathlib import Path

from glore_ray.config import ConfigError, RunConfig, load_config
from glore_ray.pipeline import STAGE_NAMES, RunFolderBusy

COMMANDS = {
    "run": "every stage in order, skipping finished ones",
    "validate": "check a config and print it resolved",
    **{name: f"run the {name} stage (its inputs must exist)" for name in STAGE_NAMES},
    "serve": "start the refine-and-rerank HTTP service (foreground)",
    "plan": "estimate rollouts, tokens and GPU-hours per stage before submitting",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glore", description="GLoRe on Ray: ORM, SORM, refiners.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("config", help="run config YAML (e.g. configs/embedded.yaml)")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.k_rollouts=4")
        if name in STAGE_NAMES:
            sp.add_argument("--force", action="store_true", help="rerun even if already done")
        if name == "run":
            sp.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
        sp.add_argument("--debug", action="store_true",
                        help="show the full traceback of a bad-input error")
    return p


def _log(msg: str) -> None:
    print(msg, flush=True)


class _Tee:
    """A text stream that writes to the terminal stream and to the run's log file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        if not self.file.closed:  # a Ray log thread may still hold this stream after the run
            self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the terminal stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def run_log(path: Path, argv: list[str]):
    """Append everything the command prints to ``path`` as well — stage lines, progress, the Ray
    workers' lines that Ray forwards to the driver, and the traceback if a stage fails — so a run's
    folder keeps its own log. Output written straight to the file descriptors by child processes
    (compilers, DeepSpeed's build) reaches only the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as f:
        f.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} glore "
                f"{' '.join(argv)}\n")
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, f), _Tee(err, f)
        try:
            yield
        except BaseException as e:
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
            raise
        finally:
            sys.stdout, sys.stderr = out, err


def _contexts(cfg: RunConfig) -> str:
    """What context (prompt + generated tokens) the generating engines and the reward models get,
    as far as it can be known without downloading anything."""
    from glore_ray.engines.context import choose_max_model_len, model_context

    r, s, t = cfg.rollout, cfg.serve, cfg.train
    model = cfg.policy.model
    own = None
    if model is not None:
        from glore_ray.hub import SMOLLM2, smollm2_folder

        try:  # a hub id not in the local cache is read when the stage starts
            own = model_context(smollm2_folder() if model == SMOLLM2 else model, local_only=True)
        except Exception:
            own = None
    name = model or "the tiny policy (512 positions)"
    if model is None:
        own = 512

    def rule(requested: int | None) -> str:
        if requested is not None:
            return f"{requested} tokens (set)"
        if own is not None:
            return (f"{choose_max_model_len(own, None, r.context_cap)} tokens (the model's {own}, "
                    f"cap {r.context_cap})")
        return (f"the model's own max_position_embeddings, at most {r.context_cap} "
                "(rollout.context_cap; read from its config.json when the stage starts)")

    return (f"context of {name}: sampling and rollouts {rule(r.max_model_len)}; serve "
            f"{rule(s.max_model_len or r.max_model_len)}; training rows "
            f"{t.max_len or 'up to the longest row of each set, at most the model context'}")


def dispatch(command: str, cfg: RunConfig, force: bool = False, until: str | None = None) -> int:
    from glore_ray import pipeline

    if command == "validate":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        print(_contexts(cfg))
        print(f"config OK: run folder {cfg.run_dir}")
        return 0
    if command == "run":
        with pipeline.run_lock(cfg):
            pipeline.run_all(cfg, _log, until=until)
        return 0
    if command in STAGE_NAMES:
        with pipeline.run_lock(cfg):
            pipeline.save_config(cfg)
            pipeline.run_stage(cfg, command, _log, force=force)
        return 0
    if command == "serve":
        from glore_ray.serve.app import serve_foreground

        return serve_foreground(cfg)
    if command == "plan":
        from glore_ray.plan import print_plan

        print_plan(cfg)
        return 0
    raise AssertionError(command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"glore: error: {e}", file=sys.stderr)
        return 2
    logged = args.command == "run" or args.command in STAGE_NAMES
    log_file = cfg.run_dir / "logs" / "glore.log"
    with run_log(log_file, sys.argv[1:] if argv is None else argv) if logged \
            else contextlib.nullcontext():
        try:
            return dispatch(args.command, cfg, getattr(args, "force", False),
                            getattr(args, "until", None))
        except (FileNotFoundError, ConfigError, ValueError, RunFolderBusy) as e:
            # bad input (a config, a file, data a stage cannot use, a busy run folder): one line
            # that says what to do; the traceback goes to the run's log (or --debug shows it)
            if getattr(args, "debug", False):
                raise
            log = getattr(sys.stderr, "file", None)
            if log is not None and not log.closed:
                log.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
            print(f"glore: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("glore: interrupted; finished stages are kept and will be skipped on rerun",
                  file=sys.stderr)
            return 130
        except Exception:
            print(f"glore: {args.command} failed; the traceback is also in {log_file}",
                  file=sys.stderr)
            raise


if __name__ == "__main__":
    sys.exit(main())
